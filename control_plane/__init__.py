"""Kefu control plane: tenants, configs, model versions and rollouts over NATS JetStream.

Layers point inward: adapters (``api`` gRPC, ``cli``, ``app``, ``up``) → services
(``service`` over the :class:`~kefu.bus.Bus` seam, ``reconciler``, ``telemetry``) → a pure
core (``desired.plan_desired``, ``leader.decide_lease``). Names load lazily so importing the
pure core pulls in no gRPC or NATS.
"""

from __future__ import annotations

from kefu.lazy import lazy_exports

_EXPORTS = {
    "ControlPlane": "service",
    "ControlPlaneApp": "app",
    "ControlPlaneOptions": "app",
    "DesiredReconciler": "reconciler",
    "LeaderLease": "leader",
    "decide_lease": "lease",
    "plan_desired": "desired",
    "ensure_layout": "service",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports("kefu.control_plane", _EXPORTS)
