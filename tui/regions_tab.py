"""The Regions / 区域 tab (pure): per region its health, since when, the hysteresis
countdown, whether it takes traffic, the tenants it serves, the evidence; then every tenant no
allowed region can serve.
"""

from __future__ import annotations

from rich.text import Text

from kefu.tui.client import Snapshot
from kefu.tui.format import OK, REFUSED, WARN, Rows, View, ago

__all__ = ["REGIONS", "REGION_STATES"]

REGION_STATES = {
    "up": ("up / 正常", OK),
    "suspect": ("suspect / 可疑", WARN),
    "down": ("DOWN / 故障", REFUSED),
    "recovering": ("recovering / 恢复中", WARN),
}


def _regions(s: Snapshot, now: float) -> Rows:
    """One row per region (health, hysteresis countdown, tenants it serves), then one per
    tenant no region can serve."""
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
                    h.evidence[:80],
                ),
            )
        )
    for r in sorted(routes, key=lambda r: r.tenant):
        if r.state == "unavailable":
            cells = (Text("unavailable / 不可用", style=REFUSED), ago(r.since, now), "-", "-")
            out.append((f"route:{r.tenant}", ("-", *cells, r.tenant, r.reason[:80])))
    return out


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
        "evidence / 依据",
    ),
    rows=_regions,
)
