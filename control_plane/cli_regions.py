"""``kefu cp regions list|set|status|drain|failback`` and ``kefu cp tenants residency``: residency
zones, failover orders, tenants' residency, region health and routes from the command line.

    kefu cp regions set cn-east --zone cn --failover cn-north,cn-south
    kefu cp tenants residency shop --home cn-east --allow cn-north --replicate --failover automatic
    kefu cp regions status          # health (state, since, countdown) and each tenant's route
    kefu cp regions drain cn-east   # maintenance: move traffic away on purpose
    kefu cp regions failback cn-east
"""

from __future__ import annotations

import argparse
from typing import Any

from kefu.control_plane.tables import ago, listed, table, when

__all__ = ["REGION_VERBS", "add_region_args"]

STATE_NAMES = {
    "up": "up / 正常",
    "suspect": "suspect / 疑似故障",
    "down": "down / 故障",
    "recovering": "recovering / 恢复中",
}


def _list(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def show_regions(r: Any) -> None:
    rows = listed(r, "regions")
    table(
        "regions / 区域",
        ["region", "zone / 驻留区", "failover order / 切换顺序", "description", "created"],
        [
            (x.id, x.zone or "-", " → ".join(x.failover) or "-", x.description, when(x.created_at))
            for x in rows
        ],
    )


def show_health(r: Any) -> None:
    rows = listed(r, "regions")
    table(
        "region health / 区域健康",
        ["region", "state", "since", "countdown", "drained", "serves traffic", "evidence"],
        [
            (
                h.region,
                STATE_NAMES.get(h.state, h.state),
                ago(h.since),
                f"{h.countdown_s:.0f}s" if h.countdown_s else "-",
                "yes / 是" if h.drained else "-",
                "yes" if h.serves_traffic else "NO",
                h.evidence[:100],
            )
            for h in rows
        ],
    )


def show_status(r: Any) -> None:
    show_health(r)
    table(
        "routes / 路由",
        ["tenant", "serving region", "state", "epoch", "home", "since", "reason"],
        [
            (
                x.tenant,
                x.region or "-",
                "serving / 服务中" if x.state == "serving" else "unavailable / 暂不可用",
                x.epoch,
                x.home,
                ago(x.since),
                x.reason[:100],
            )
            for x in r.routes
        ],
    )


def show_residency(t: Any) -> None:
    res = t.residency
    print(
        f"tenant {t.id}: home {res.home}, allowed {', '.join(res.allowed)}, "
        f"replicate {'yes' if res.replicate else 'no'}, failover {res.failover_mode}"
    )


def _residency(pb: Any, a: argparse.Namespace) -> tuple[str, Any]:
    return "SetTenantResidency", pb.SetTenantResidencyRequest(
        tenant=a.tenant,
        residency=pb.TenantResidency(
            home=a.home,
            allowed=_list(a.allow),
            replicate=a.replicate,
            failover_mode=a.failover,
        ),
    )


REGION_VERBS: dict[tuple[str, ...], dict[str, Any]] = {
    ("regions", "list"): {
        "build": lambda pb, a: ("ListRegions", pb.ListRegionsRequest()),
        "show": show_regions,
    },
    ("regions", "create"): {
        "build": lambda pb, a: (
            "CreateRegion",
            pb.CreateRegionRequest(region=a.region, description=a.description or ""),
        ),
        "show": show_regions,
    },
    ("regions", "set"): {
        "build": lambda pb, a: (
            "ConfigureRegion",
            pb.ConfigureRegionRequest(
                region=a.region, zone=a.zone or "", failover=_list(a.failover)
            ),
        ),
        "show": show_regions,
    },
    ("regions", "status"): {
        "build": lambda pb, a: ("GetFailoverStatus", pb.GetFailoverStatusRequest()),
        "show": show_status,
    },
    ("regions", "drain"): {
        "build": lambda pb, a: ("DrainRegion", pb.RegionActionRequest(region=a.region)),
        "show": show_health,
    },
    ("regions", "failback"): {
        "build": lambda pb, a: ("FailbackRegion", pb.RegionActionRequest(region=a.region)),
        "show": show_health,
    },
    ("tenants", "residency"): {"build": _residency, "show": show_residency},
}


def add_region_args(path: tuple[str, ...], p: argparse.ArgumentParser) -> None:
    if path in (("regions", "set"), ("regions", "drain"), ("regions", "failback")):
        p.add_argument("region")
    if path == ("regions", "set"):
        p.add_argument("--zone", help="residency zone, e.g. cn or eu ('' = a zone of its own)")
        p.add_argument(
            "--failover", help="failover order: regions of the same zone, comma-separated"
        )
    if path == ("tenants", "residency"):
        p.add_argument("tenant")
        p.add_argument("--home", required=True, help="home region")
        p.add_argument(
            "--allow", help="other regions allowed to serve it, comma-separated (same zone)"
        )
        p.add_argument(
            "--replicate",
            action=argparse.BooleanOptionalAction,
            default=False,
            help="sessions may be replicated to the allowed regions (default: no)",
        )
        p.add_argument(
            "--failover",
            choices=("automatic", "manual", "never"),
            default="automatic",
            help="failover mode (default %(default)s)",
        )
