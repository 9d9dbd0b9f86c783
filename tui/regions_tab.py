"""The Regions / 区域 tab (pure): per region its health, since when, the hysteresis
countdown, whether it takes traffic, the tenants it serves, the replication lag and the
evidence; below it the routes table, one row per tenant (serving region, state, home, epoch).

The replication lag is read from a ``replication_lag_s`` field of the region's health when the
control plane's message carries one (session replication adds it); "—" otherwise.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from kefu.tui.client import Snapshot
from kefu.tui.format import OK, REFUSED, WARN, Rows, View, ago

__all__ = ["REGIONS", "REGION_STATES", "ROUTES", "replication_lag"]

REGION_STATES = {
    "up": ("up / 正常", OK),
    "suspect": ("suspect / 可疑", WARN),
    "down": ("DOWN / 故障", REFUSED),
    "recovering": ("recovering / 恢复中", WARN),
}

NO_VALUE = "—"
#: Lag at or above this many seconds is shown in yellow (a failover would lose more turns).
LAG_WARN_S = 5.0


def replication_lag(health: Any) -> Text:
    """The largest replication lag of the region's nodes; "—" when none of them replicates."""
    lag = getattr(health, "replication_lag_s", None)
    if not getattr(health, "replicating", False) or not isinstance(lag, int | float):
        return Text(NO_VALUE)
    text = f"{lag:.1f}s" if lag < 120 else f"{lag / 60:.0f}m"
    return Text(text, style=WARN if lag >= LAG_WARN_S else "")


def _regions(s: Snapshot, now: float) -> Rows:
    """One row per region (health, hysteresis countdown, tenants it serves, lag)."""
    routes = list(s.failover.routes)
    out: Rows = []
    for h in sorted(s.failover.regions, key=lambda h: h.region):
        name, style = REGION_STATES.get(h.state, (h.state, WARN))
        served = sorted(r.tenant for r in routes if r.state == "serving" and r.region == h.region)
        out.append(
            (
                h.region,
                (
                    h.region,
                    Text(name + (" (drained / 已排空)" if h.drained else ""), style=style),
                    ago(h.since, now),
                    f"{h.countdown_s:.0f}s" if h.countdown_s else "-",
                    "yes / 是" if h.serves_traffic else "no / 否",
                    ", ".join(served) or "-",
                    replication_lag(h),
                    h.evidence[:80],
                ),
            )
        )
    return out


def _routes(s: Snapshot, now: float) -> Rows:
    """Every tenant's route: where it is served now, or unavailable (in red) and why."""
    out: Rows = []
    for r in sorted(s.failover.routes, key=lambda r: r.tenant):
        if r.state == "unavailable":
            state = Text("unavailable / 不可用", style=REFUSED)
        elif r.home and r.region != r.home:
            state = Text("failed over / 已切换", style=WARN)
        else:
            state = Text("serving / 服务中", style=OK)
        cells = (r.tenant, r.region or "-", state, r.home or "-", str(r.epoch))
        out.append((r.tenant, (*cells, ago(r.since, now), r.reason[:80] or "-")))
    return out


ROUTES = View(
    id="routes",
    title="Routes / 路由",
    columns=(
        "tenant / 租户",
        "served from / 服务区域",
        "route / 路由状态",
        "home / 本地区域",
        "epoch / 纪元",
        "since / 起始",
        "reason / 原因",
    ),
    rows=_routes,
)

REGIONS = View(
    id="regions",
    title="Regions / 区域",
    columns=(
        "region / 区域",
        "health / 健康",
        "since / 起始",
        "countdown / 倒计时",
        "takes traffic / 承载流量",
        "tenants served / 服务租户",
        "replication lag / 复制延迟",
        "evidence / 依据",
    ),
    rows=_regions,
    more=(ROUTES,),
)
