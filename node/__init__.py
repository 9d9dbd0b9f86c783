"""Kefu node: serves customer conversations for the tenants of one region.

Layers point inward: adapters (``server``, ``grpc_api``, ``sqlite_store``, ``metrics``,
``cli``) → services (``conversation``, ``tenant``, ``inference``) → a pure core (``scenario``,
``reply``, ``knowledge``, ``entities``, ``language``, ``admission``, ``redaction``, the
``sessions`` seam). Names load lazily so importing the pure core pulls in no gRPC.
"""

from __future__ import annotations

from kefu.lazy import lazy_exports

_EXPORTS = {
    "Node": "server",
    "NodeOptions": "server",
    "ConversationService": "conversation",
    "TurnRequest": "conversation",
    "TurnResult": "conversation",
    "TenantRegistry": "tenant",
    "BatchingModelRuntime": "inference",
    "ModelRuntime": "predictions",
    "SessionStore": "sessions",
    "KnowledgeBase": "knowledge",
    "select_scenario": "scenario",
    "decide_reply": "reply",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports("kefu.node", _EXPORTS)
