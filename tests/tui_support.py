"""An in-memory :class:`ControlPlaneClient` double with fixed, deterministic data (for the
console's snapshot and banner tests), and a helper to wait on a running Textual app."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from kefu.errors import KefuError
from kefu.v1 import control_plane_pb2 as pb

T = TypeVar("T")

NOW = 1_790_000_000.0  # a fixed "now" (2026-09-21 UTC): heartbeat ages are deterministic


class MemoryClient:
    """Fixed replies; ``fail`` makes every call raise it (to show the banner)."""

    def __init__(self, *, fail: KefuError | None = None, role: str = "admin") -> None:
        self.fail = fail
        self.role = role
        self.toggled: list[tuple[str, bool]] = []
        self.commands: list[tuple[str, str]] = []
        self.region_commands: list[tuple[str, str]] = []
        #: Set to make ``analysis`` fail (the analysis screen's problem line).
        self.analysis_fail: KefuError | None = None
        #: ``replication_lag_s`` per region, carried only if the message type has the field.
        self.lag: dict[str, float] = {}
        self._tenants = {
            "demo-shop": pb.Tenant(
                id="demo-shop",
                name="Demo Shop 演示商店",
                enabled=True,
                created_at=NOW - 86400,
                current_config=3,
                api_keys=[pb.ApiKey(id="k1", created_at=NOW - 86400)],
            ),
            "acme": pb.Tenant(id="acme", name="ACME", enabled=False, current_config=1),
        }

    @property
    def target(self) -> str:
        return "memory://demo"

    async def _reply(self, value: T) -> T:
        if self.fail is not None:
            raise self.fail
        return value

    async def status(self) -> pb.ControlPlaneStatus:
        return await self._reply(
            pb.ControlPlaneStatus(
                replica="cp-1",
                leader="cp-1",
                is_leader=True,
                software_version="0.1.0",
                caller=self.role,
                caller_role=self.role,
            )
        )

    async def nodes(self) -> pb.ListNodesReply:
        return await self._reply(
            pb.ListNodesReply(
                nodes=[
                    pb.Node(
                        node_id="sh-1",
                        region="cn-east",
                        software_version="0.1.0",
                        heartbeat_at=NOW - 3,
                        online=True,
                        tenants=[
                            pb.ObservedTenant(tenant="demo-shop", state="serving", config_version=3)
                        ],
                        models_loaded=["demo-shop-intent@1.2.0", "sentiment@1.0.0"],
                    ),
                    pb.Node(
                        node_id="bj-1",
                        region="cn-north",
                        software_version="0.1.0",
                        heartbeat_at=NOW - 400,
                        online=False,
                        tenants=[
                            pb.ObservedTenant(
                                tenant="demo-shop",
                                state="refused",
                                config_version=2,
                                error="demo-shop.yaml:4: tenant.bogus_field: extra field",
                            )
                        ],
                        telemetry_buffered=12,
                        telemetry_dropped=1,
                    ),
                ]
            )
        )

    async def tenants(self) -> pb.ListTenantsReply:
        return await self._reply(pb.ListTenantsReply(tenants=list(self._tenants.values())))

    async def assignments(self) -> pb.ListAssignmentsReply:
        return await self._reply(
            pb.ListAssignmentsReply(
                assignments=[
                    pb.Assignment(
                        tenant="demo-shop",
                        region="cn-east",
                        models={"intent": "demo-shop-intent@1.2.0"},
                        updated_at=NOW - 600,
                        updated_by="admin",
                    ),
                    pb.Assignment(
                        tenant="demo-shop",
                        region="cn-north",
                        config_version=2,
                        models={"intent": "demo-shop-intent@1.1.0"},
                    ),
                ]
            )
        )

    async def models(self) -> pb.ListModelsReply:
        return await self._reply(
            pb.ListModelsReply(
                models=[
                    pb.ModelVersion(
                        name="demo-shop-intent",
                        version="1.2.0",
                        task="intent",
                        size=1_800_000,
                        signer="abcdef0123456789",
                        metrics={"accuracy": 0.9412, "macro_f1": 0.9301},
                        published_at=NOW - 3600,
                        published_by="admin",
                    )
                ]
            )
        )

    async def telemetry(self) -> pb.QueryTelemetryReply:
        return await self._reply(
            pb.QueryTelemetryReply(
                series=[
                    pb.TelemetrySeries(
                        tenant="demo-shop",
                        scenario="after_sales",
                        model_version="demo-shop-intent@1.2.0",
                        turns=1200,
                        errors=2,
                        p50_ms=12,
                        p95_ms=31,
                        fallback_rate=0.25,
                        handoff_rate=0.04,
                        mean_confidence=0.87,
                        feedback=40,
                        mean_rating=4.2,
                        corrected_accuracy=0.9,
                    )
                ],
                nodes_reporting=1,
            )
        )

    async def audit(self) -> pb.QueryAuditReply:
        return await self._reply(
            pb.QueryAuditReply(
                events=[
                    pb.AuditEvent(
                        seq=7,
                        at=NOW - 600,
                        actor="admin",
                        action="assign",
                        resource="assignment/demo-shop/cn-east",
                        tenant="demo-shop",
                        before_digest="aaaaaaaaaaaaaaaa",
                        after_digest="bbbbbbbbbbbbbbbb",
                    )
                ]
            )
        )

    async def set_tenant_enabled(self, tenant: str, enabled: bool) -> pb.Tenant:
        t = self._tenants[tenant]
        t.enabled = enabled
        self.toggled.append((tenant, enabled))
        return await self._reply(t)

    async def rollouts(self) -> pb.ListRolloutsReply:
        return await self._reply(
            pb.ListRolloutsReply(
                rollouts=[
                    pb.Rollout(
                        id="ro-0a1b2c3d4e",
                        tenant="demo-shop",
                        phase="running",
                        wave=0,
                        step=1,
                        weight=0.05,
                        target={"intent": "demo-shop-intent@2026.12.01"},
                        waves=[pb.RolloutWave(regions=["cn-east"], node_share=0.5)],
                        steps=[pb.RolloutStep(weight=w, bake_s=300) for w in (0.01, 0.05, 1.0)],
                        nodes_converged=1,
                        nodes_total=1,
                        sessions_canary=12,
                        sessions_baseline=230,
                        updated_at=NOW - 90,
                        reason="wave 1 step 2 (5%) serving on 1 node(s)",
                        policy="default",
                        history=[
                            "2026-09-21 13:50:00 created by admin",
                            "2026-09-21 13:55:00 wave 1 step 1 (1%) serving on 1 node(s) "
                            "(controller)",
                            "2026-09-21 14:00:00 canary analysis: advance — every metric within "
                            "its tolerance (controller)",
                        ],
                    )
                ]
            )
        )

    async def command_rollout(self, rollout_id: str, command: str) -> pb.Rollout:
        self.commands.append((rollout_id, command))
        return await self._reply(pb.Rollout(id=rollout_id))

    async def alerts(self) -> pb.ListAlertsReply:
        return await self._reply(
            pb.ListAlertsReply(
                alerts=[
                    pb.AlertMessage(
                        id="rollback:ro-0a1b2c3d4e", kind="rollback", severity="critical",
                        at=NOW - 120, tenant="demo-shop", resource="rollouts/ro-0a1b2c3d4e",
                        title="ro-0a1b2c3d4e rolled back: fallback worse / 灰度发布已回滚",
                    ),
                    pb.AlertMessage(
                        id="health:cn-north:7", kind="failover", severity="info",
                        at=NOW - 30, resource="region/cn-north",
                        title="region/cn-north: up / 区域状态变化", acked_by="admin",
                        acked_at=NOW - 10,
                    ),
                ]
            )
        )  # fmt: skip

    async def failover(self) -> pb.FailoverStatus:
        reply = await self._reply(self._failover())
        lag_field = "replication_lag_s"  # added by the replication work; absent until then
        if lag_field in pb.RegionHealth.DESCRIPTOR.fields_by_name:
            for h in reply.regions:
                setattr(h, lag_field, self.lag.get(h.region, 0.0))
        return reply

    def _failover(self) -> pb.FailoverStatus:
        return (
            pb.FailoverStatus(
                regions=[
                    pb.RegionHealth(region="cn-east", state="up", since=NOW - 4000,
                                    serves_traffic=True, evidence="1/1 nodes heartbeating"),
                    pb.RegionHealth(region="cn-north", state="recovering", since=NOW - 20,
                                    countdown_s=40, evidence="0/1 nodes heartbeating"),
                ],
                routes=[
                    pb.TenantRoute(tenant="demo-shop", region="cn-east", state="serving", epoch=3),
                    pb.TenantRoute(tenant="solo", state="unavailable", since=NOW - 20,
                                   reason="no allowed region can serve"),
                ],
            )
        )  # fmt: skip

    async def analysis(self, rollout_id: str) -> pb.RolloutAnalysis:
        if self.analysis_fail is not None:
            raise self.analysis_fail
        return await self._reply(ANALYSIS)

    async def command_region(self, region: str, command: str) -> pb.RegionHealth:
        self.region_commands.append((region, command))
        return await self._reply(pb.RegionHealth(region=region, drained=command == "drain"))

    async def close(self) -> None:
        pass


def _metric(
    name: str, ce: float, ct: float, be: float, bt: float, tol: float, **kw: Any
) -> pb.CanaryMetric:
    cr, br = ce / ct, be / bt
    return pb.CanaryMetric(
        metric=name, canary_events=ce, canary_trials=ct, baseline_events=be, baseline_trials=bt,
        canary_rate=cr, baseline_rate=br, diff=cr - br, tolerance=tol, enough=True, **kw,
    )  # fmt: skip


#: A rolled-back canary: fallback significantly worse (red), errors within tolerance (green),
#: wrong intent with too few corrections (undecided), and a per-node sample-ratio mismatch.
ANALYSIS = pb.RolloutAnalysis(
    rollout_id="ro-0a1b2c3d4e",
    policy="default",
    at=NOW - 60,
    action="rollback",
    reasons=["fallback significantly worse: +18.00% [+9.10%, +26.90%] / 兜底率显著变差"],
    canary_sessions=120,
    baseline_sessions=2300,
    metrics=[
        _metric("error", 1, 400, 9, 7000, 0.01,
                lower=-0.004, upper=0.006, p_value=1.0, within=True),
        _metric("fallback", 92, 400, 350, 7000, 0.05,
                lower=0.091, upper=0.269, p_value=0.0004, worse=True),
        pb.CanaryMetric(metric="wrong_intent", canary_events=2, canary_trials=9, baseline_events=10,
                        baseline_trials=150, canary_rate=2 / 9, baseline_rate=10 / 150,
                        diff=2 / 9 - 10 / 150, tolerance=0.05, p_value=1.0),
    ],
    sample_ratio=[
        pb.SampleRatio(scope="overall", canary=120, baseline=2300, expected_canary=121.0,
                       chi2=0.01, p_value=1.0, chi2_p=0.92),
        pb.SampleRatio(scope="sh-2", canary=80, baseline=300, expected_canary=19.0,
                       chi2=205.3, p_value=0.0001, mismatch=True, chi2_p=0.0),
    ],
)  # fmt: skip


async def until(check: Callable[[], bool], pilot: object, *, limit_s: float = 60.0) -> None:
    """Let the app run until ``check()`` holds (a bound on waiting, not a timed assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while not check():
        if loop.time() > end:
            raise AssertionError(f"condition not reached within {limit_s}s")
        await pilot.pause(0.05)  # type: ignore[attr-defined]


def open_tab(key: str) -> Callable[[Any], Coroutine[Any, Any, None]]:
    """A snapshot test's ``run_before``: wait for the first refresh, then press the tab's key."""

    async def run_before(pilot: Any) -> None:
        await until(lambda: pilot.app.generation > 0, pilot)
        await pilot.press(key)
        await pilot.pause()

    return run_before
