"""Replicated sessions inside the residency zone (issue 15): a turn's changes go to an outbox
in the same SQLite transaction, a shipper publishes them to the region's turns stream, the other
allowed regions of the zone source that stream, and a node serving a failed-over conversation
imports its history on the first turn. ``records`` is the pure core (names, payloads, the zone
key, the stream plan); ``service`` is the NATS adapter. See docs/failover.md."""
