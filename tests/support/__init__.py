"""Helpers shared by the tests (one copy each; fixtures that use them live in conftest.py).

- ``support.processes``: ``free_port`` and ``start_process`` (start a child, read its stdout
  until a line says it is ready).
- ``support.grpc_node``: an in-process node with a gRPC stub on a loopback port, the demo
  tenant's key, a second tenant's config, and the hot-swap client loop.
"""
