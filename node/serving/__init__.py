"""Serving a node: gRPC API, admission control, metrics, logs, the server and the worker pool."""
