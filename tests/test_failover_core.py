"""The pure failover core: region health hysteresis, residency validation, the route planner."""

from __future__ import annotations

import itertools

import pytest

from kefu.control_plane.region_health import (
    FailbackRefused,
    HealthPolicy,
    RegionSignals,
    Verdict,
    drain,
    failback,
    judge,
    serves_traffic,
    step,
)
from kefu.control_plane.residency import (
    ResidencyError,
    candidates,
    check_region,
    check_residency,
    plan_routes,
)
from kefu.wire import RegionHealth, RegionRecord, TenantRecord, TenantResidency, TenantRoute

POLICY = HealthPolicy(down_after_s=2.0, dwell_s=30.0, max_dwell_s=100.0)
GOOD = Verdict(good=True, nats_partition=False, evidence="ok")
BAD = Verdict(good=False, nats_partition=False, evidence="silent")


def run(h: RegionHealth, seq: list[tuple[float, Verdict]]) -> list[str]:
    """Feed (time, verdict) observations; the states after each."""
    out = []
    for t, v in seq:
        h, _ = step(h, v, t, POLICY)
        out.append(h.state)
    return out


# --- judging signals ---------------------------------------------------------------------------


def test_judge_heartbeats_gateways_and_partition() -> None:
    assert judge(RegionSignals(nodes=2, heartbeating=1)).good
    assert not judge(RegionSignals(nodes=2, heartbeating=0)).good
    assert not judge(RegionSignals(nodes=2, heartbeating=0, gateway_reachable=0)).good
    assert not judge(RegionSignals(nodes=0, heartbeating=0, gateway_reachable=3)).good
    cut = judge(RegionSignals(nodes=2, heartbeating=0, gateway_reachable=2))
    assert cut.good and cut.nats_partition and "NATS" in cut.evidence
    assert not judge(RegionSignals(nodes=2, heartbeating=2, gateway_reachable=0)).nats_partition
    assert "1/2 nodes heartbeating" in judge(RegionSignals(nodes=2, heartbeating=1)).evidence


# --- the state machine -------------------------------------------------------------------------


def test_full_cycle_up_suspect_down_recovering_up() -> None:
    h = RegionHealth(region="a", since=0.0)
    states = run(
        h,
        [(1, BAD), (2, BAD), (3.0, BAD), (4, GOOD), (20, GOOD), (33.9, GOOD), (34.0, GOOD)],
    )
    assert states == ["suspect", "suspect", "down", "recovering", "recovering", "recovering", "up"]


def test_stall_shorter_than_hysteresis_never_leaves_traffic() -> None:
    h = RegionHealth(region="a", since=0.0)
    h, t1 = step(h, BAD, 10.0, POLICY)
    assert h.state == "suspect" and t1 is not None and not t1.moves_traffic
    assert h.next_at == 12.0  # the countdown the console shows
    h, _ = step(h, BAD, 11.9, POLICY)
    assert serves_traffic(h)
    h, t2 = step(h, GOOD, 11.95, POLICY)
    assert h.state == "up" and t2 is not None and not t2.moves_traffic


def test_down_moves_traffic_and_recovering_does_not_return_it() -> None:
    h = RegionHealth(region="a", since=0.0)
    h, _ = step(h, BAD, 1.0, POLICY)
    h, t = step(h, BAD, 3.0, POLICY)
    assert h.state == "down" and t is not None and t.moves_traffic and t.before == "suspect"
    h, t = step(h, GOOD, 4.0, POLICY)
    assert h.state == "recovering" and not serves_traffic(h)
    assert t is not None and not t.moves_traffic
    h, t = step(h, GOOD, 34.0, POLICY)
    assert h.state == "up" and t is not None and t.moves_traffic


def test_relapse_doubles_dwell_capped() -> None:
    assert [POLICY.dwell_for(n) for n in range(4)] == [30.0, 60.0, 100.0, 100.0]
    h = RegionHealth(region="a", state="down", since=0.0)
    h, _ = step(h, GOOD, 1.0, POLICY)
    h, _ = step(h, BAD, 20.0, POLICY)  # relapse before the dwell ended
    assert h.state == "down" and h.relapses == 1
    h, _ = step(h, GOOD, 21.0, POLICY)
    assert h.next_at == 81.0
    h, _ = step(h, GOOD, 51.0, POLICY)  # 30 s is no longer enough
    assert h.state == "recovering"
    h, _ = step(h, GOOD, 81.0, POLICY)
    assert h.state == "up" and h.relapses == 0 and h.next_at == 0.0


@pytest.mark.parametrize("pattern", list(itertools.product([True, False], repeat=8)))
def test_flapping_faster_than_dwell_never_returns_traffic(pattern: tuple[bool, ...]) -> None:
    """Whatever a down region does within less than one dwell, it serves no traffic, and a
    region that is up never stops serving within less than down_after_s."""
    h = RegionHealth(region="a", state="down", since=0.0)
    for i, good in enumerate(pattern):
        h, _ = step(h, GOOD if good else BAD, 1.0 + i * 3.0, POLICY)  # 22 s < 30 s dwell
        assert not serves_traffic(h)
    h = RegionHealth(region="a", since=0.0)
    for i, good in enumerate(pattern):
        h, _ = step(h, GOOD if good else BAD, 1.0 + i * 0.2, POLICY)  # 1.4 s < 2 s
        assert serves_traffic(h)


def test_every_state_and_verdict_has_a_defined_successor() -> None:
    for state in ("up", "suspect", "down", "recovering"):
        for v in (GOOD, BAD):
            h = RegionHealth(region="a", state=state, since=0.0, streak_since=0.0)
            new, t = step(h, v, 1000.0, POLICY)
            assert new.state in ("up", "suspect", "down", "recovering")
            assert (t is None) == (new.state == state)
            assert new.evidence == v.evidence


def test_drain_and_failback() -> None:
    h = drain(RegionHealth(region="a", since=0.0))
    assert h.state == "up" and not serves_traffic(h)
    h, t = failback(h, 5.0)
    assert serves_traffic(h) and t is None
    rec, t = failback(RegionHealth(region="a", state="recovering", since=0.0), 5.0)
    assert rec.state == "up" and t is not None and t.moves_traffic and "operator" in t.evidence
    with pytest.raises(FailbackRefused, match="区域"):
        failback(RegionHealth(region="a", state="down", since=0.0), 5.0)


# --- residency ----------------------------------------------------------------------------------


def regions() -> dict[str, RegionRecord]:
    return {
        "cn-east": RegionRecord(id="cn-east", zone="cn", failover=["cn-north", "cn-south"]),
        "cn-north": RegionRecord(id="cn-north", zone="cn", failover=["cn-east"]),
        "cn-south": RegionRecord(id="cn-south", zone="cn"),
        "eu-1": RegionRecord(id="eu-1", zone="eu"),
        "lone": RegionRecord(id="lone"),
    }


def test_check_region_failover_stays_in_zone() -> None:
    regs = regions()
    check_region(regs["cn-east"], regs)
    for bad, match in [
        (RegionRecord(id="x", zone="cn", failover=["eu-1"]), "outside zone"),
        (RegionRecord(id="x", zone="cn", failover=["x"]), "itself"),
        (RegionRecord(id="x", zone="cn", failover=["cn-east", "cn-east"]), "twice"),
        (RegionRecord(id="x", zone="cn", failover=["nowhere"]), "no region"),
        (RegionRecord(id="x", failover=["cn-east"]), "outside zone"),
        (RegionRecord(id="x", zone="Bad Zone"), "invalid zone"),
    ]:
        with pytest.raises(Exception, match=match):
            check_region(bad, regs)


def test_check_residency_normalises_and_refuses_other_zones() -> None:
    regs = regions()
    res = check_residency(
        TenantResidency(home="cn-east", allowed=["cn-north", "cn-north", "cn-east"]), regs
    )
    assert res.allowed == ["cn-east", "cn-north"]
    with pytest.raises(ResidencyError, match="outside the residency zone"):
        check_residency(TenantResidency(home="cn-east", allowed=["eu-1"]), regs)
    with pytest.raises(ResidencyError, match="outside the residency zone"):
        check_residency(TenantResidency(home="lone", allowed=["cn-east"]), regs)
    with pytest.raises(ResidencyError, match="不存在"):
        check_residency(TenantResidency(home="mars"), regs)
    with pytest.raises(ResidencyError, match="不存在"):
        check_residency(TenantResidency(home="cn-east", allowed=["mars"]), regs)
    assert check_residency(TenantResidency(home="lone"), regs).allowed == ["lone"]


def test_candidates_follow_home_failover_order_then_names() -> None:
    res = TenantResidency(home="cn-east", allowed=["cn-east", "cn-south", "cn-north"])
    assert candidates(res, regions()) == ["cn-east", "cn-north", "cn-south"]
    res = TenantResidency(home="cn-south", allowed=["cn-south", "cn-north", "cn-east"])
    assert candidates(res, regions()) == ["cn-south", "cn-east", "cn-north"]


# --- the route planner --------------------------------------------------------------------------


def tenant(tid: str, home: str, allowed: list[str], mode: str = "automatic") -> TenantRecord:
    return TenantRecord(
        id=tid,
        residency=TenantResidency(home=home, allowed=[home, *allowed], failover_mode=mode),  # type: ignore[arg-type]
    )


def health(**states: str) -> dict[str, RegionHealth]:
    out = {}
    for r, s in states.items():
        name = r.replace("_", "-")
        drained = s == "drained"
        out[name] = RegionHealth(
            region=name, state="up" if drained else s, drained=drained, since=0.0
        )  # type: ignore[arg-type]
    return out


def routes(
    tenants: list[TenantRecord],
    h: dict[str, RegionHealth],
    cur: dict[str, TenantRoute] | None = None,
) -> dict[str, TenantRoute]:
    cur = cur or {}
    plan = plan_routes(tenants, regions(), h, cur, 100.0, serves_traffic)
    out = {k: v for k, v in cur.items() if k not in plan.removed}
    out.update({r.tenant: r for r in plan.changed})
    return out


ALL_UP = {"cn_east": "up", "cn_north": "up", "cn_south": "up", "eu_1": "up"}


def test_home_while_healthy_failover_in_order_and_back() -> None:
    ts = [tenant("shop", "cn-east", ["cn-south", "cn-north"])]
    r = routes(ts, health(**ALL_UP))
    assert (r["shop"].region, r["shop"].epoch, r["shop"].state) == ("cn-east", 1, "serving")
    assert r["shop"].standby == ["cn-north", "cn-south"]
    assert routes(ts, health(**ALL_UP), r) == r  # nothing to write
    assert plan_routes(ts, regions(), health(**ALL_UP), r, 1.0, serves_traffic).changed == []
    r = routes(ts, health(**{**ALL_UP, "cn_east": "suspect"}), r)
    assert r["shop"].region == "cn-east" and r["shop"].epoch == 1
    r = routes(ts, health(**{**ALL_UP, "cn_east": "down"}), r)
    assert (r["shop"].region, r["shop"].epoch) == ("cn-north", 2)
    assert "failover to cn-north" in r["shop"].reason
    # cn-north fails too: the next in the home's order.
    r = routes(ts, health(**{**ALL_UP, "cn_east": "down", "cn_north": "down"}), r)
    assert (r["shop"].region, r["shop"].epoch) == ("cn-south", 3)
    # cn-north is back but the tenant stays where it is healthy; home back = goes home.
    r = routes(ts, health(**{**ALL_UP, "cn_east": "recovering"}), r)
    assert r["shop"].region == "cn-south"
    r = routes(ts, health(**ALL_UP), r)
    assert (r["shop"].region, r["shop"].epoch) == ("cn-east", 4)


def test_never_outside_allowed_regions_unavailable_instead() -> None:
    ts = [tenant("bank", "cn-east", [])]
    r = routes(ts, health(**{**ALL_UP, "cn_east": "down"}))
    assert (r["bank"].state, r["bank"].region) == ("unavailable", "")
    assert "cn-east: down" in r["bank"].reason


def test_exhaustive_planner_invariants() -> None:
    """Every combination of region states × tenant residencies: the route is inside the allowed
    regions and healthy, or unavailable only when no allowed region may serve."""
    names = ["cn-east", "cn-north", "cn-south"]
    states = ["up", "suspect", "down", "recovering", "drained"]
    ts = [
        tenant("a", "cn-east", ["cn-north"]),
        tenant("b", "cn-north", ["cn-east", "cn-south"]),
        tenant("c", "cn-south", []),
        tenant("d", "cn-east", ["cn-north", "cn-south"], mode="never"),
        tenant("e", "cn-east", ["cn-north"], mode="manual"),
    ]
    for combo in itertools.product(states, repeat=3):
        h = health(**{n.replace("-", "_"): s for n, s in zip(names, combo, strict=True)})
        r = routes(ts, h)
        for t in ts:
            assert t.residency is not None
            route = r[t.id]
            ok = [x for x in t.residency.allowed if serves_traffic(h[x])]
            if route.state == "serving":
                assert route.region in t.residency.allowed and serves_traffic(h[route.region])
            assert set(route.standby) <= set(t.residency.allowed) - {route.region}
            assert all(serves_traffic(h[x]) for x in route.standby)
            if t.residency.failover_mode != "automatic":
                assert route.standby == []
            if t.residency.failover_mode == "automatic":
                assert (route.state == "unavailable") == (not ok)
            if t.residency.failover_mode == "never":
                assert route.region in ("", t.residency.home)
            if t.residency.failover_mode == "manual" and route.region not in ("", "cn-east"):
                assert h["cn-east"].drained


def test_manual_moves_only_on_drain_and_removed_routes() -> None:
    ts = [tenant("m", "cn-east", ["cn-north"], mode="manual")]
    r = routes(ts, health(**{**ALL_UP, "cn_east": "down"}))
    assert r["m"].state == "unavailable" and "drain to move" in r["m"].reason
    r = routes(ts, health(**{**ALL_UP, "cn_east": "drained"}), r)
    assert (r["m"].region, r["m"].epoch) == ("cn-north", 2)
    gone = plan_routes([], regions(), health(**ALL_UP), r, 1.0, serves_traffic)
    assert gone.removed == ["m"]
    disabled = ts[0].model_copy(update={"enabled": False})
    assert plan_routes([disabled], regions(), health(**ALL_UP), r, 1.0, serves_traffic).removed


def test_failover_only_to_a_region_serving_the_tenant() -> None:
    ts = [tenant("shop", "cn-east", ["cn-north", "cn-south"])]
    h = health(**{**ALL_UP, "cn_east": "down"})
    plan = plan_routes(ts, regions(), h, {}, 1.0, serves_traffic, lambda r, t: r == "cn-south")
    assert plan.changed[0].region == "cn-south"
    plan = plan_routes(ts, regions(), h, {}, 1.0, serves_traffic, lambda r, t: False)
    assert plan.changed[0].state == "unavailable"
    assert "cn-north: not serving shop yet" in plan.changed[0].reason
