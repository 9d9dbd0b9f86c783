"""Kefu node: serves customer conversations for the tenants of one region.

Subpackages: ``nlu`` (language, entities, redaction, model predictions and batched
inference), ``dialog`` (scenarios, flows, replies, knowledge, hand-off, plugins, the
conversation service and the tenant registry), ``sessions`` (the session store seam, its
in-memory and SQLite stores, group commit), ``serving`` (gRPC API, admission, metrics, logs,
server, worker pool) and ``agent`` (the control-plane link: agent, reconcile, telemetry).
``main``/``cli``/``install`` are the entry points.

Layers point inward: adapters (``serving.server``, ``serving.grpc_api``,
``sessions.sqlite_store``, ``serving.metrics``, ``cli``) → services (``dialog.conversation``,
``dialog.tenant``, ``nlu.inference``) → a pure core (``dialog.scenario``, ``dialog.reply``,
``dialog.knowledge``, ``nlu.entities``, ``nlu.language``, ``serving.admission``,
``nlu.redaction``, the ``sessions.store`` seam). Names load lazily so importing the pure core
pulls in no gRPC. ``tests/test_layers.py`` checks the contracts.
"""

from __future__ import annotations

from kefu.lazy import lazy_exports

_EXPORTS = {
    "Node": "serving.server",
    "NodeOptions": "serving.server",
    "ConversationService": "dialog.conversation",
    "TurnRequest": "dialog.conversation",
    "TurnResult": "dialog.conversation",
    "TenantRegistry": "dialog.tenant",
    "BatchingModelRuntime": "nlu.inference",
    "ModelRuntime": "nlu.predictions",
    "SessionStore": "sessions.store",
    "KnowledgeBase": "dialog.knowledge",
    "select_scenario": "dialog.scenario",
    "decide_reply": "dialog.reply",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports("kefu.node", _EXPORTS)
