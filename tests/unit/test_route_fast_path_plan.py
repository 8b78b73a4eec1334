"""Planner and driver side of the route fast path: the L3_ROUTING punt, segment re-entry by
802.1Q index, the destinations the C engine holds, on_demand mode and its cache flows."""

from __future__ import annotations

from agent.model.decode import decode_v2
from agent.model.state import DesiredState
from agent.planner import cookies, routing
from agent.planner.cookies import Kind
from agent.planner.flows import Flow
from agent.planner.pipeline import TABLE_NAMES, Table
from agent.planner.plan import (
    BASE_OWNER,
    ON_DEMAND,
    Planner,
    neighbor_owner,
    port_owner,
    route_segment_owner,
)
from agent.routing.driver import RouteDriver, cache_cookie
from agent.routing.engine import RouteEngine
from agent.sandbox import goalstates as gs
from tests.unit.test_route_engine import punted

HOST = "172.31.0.11"
DVR = "fe:16:11:00:00:01"
S1 = gs.subnet("s1", "v1", "10.1.1.0/24", 101, "10.1.1.1", "fa:16:3e:aa:00:01", op=gs.CREATE)
S2 = gs.subnet("s2", "v1", "10.1.2.0/24", 102, "10.1.2.1", "fa:16:3e:aa:00:02", op=gs.CREATE)
PORT_A = gs.port("pa", "v1", "s1", "10.1.1.10", "fa:16:3e:00:00:0a")
NB_B = gs.neighbor("pb", "v1", "s2", "10.1.2.20", "fa:16:3e:00:00:0b", "172.31.0.12", kind=gs.pb.L3)
ROUTER = gs.router("r1", DVR, ["s1", "s2"])
ROUTE_PORT = 7


def _planner(*states, mode: str = "proactive") -> Planner:
    state = DesiredState()
    state.apply(decode_v2(gs.goal_state_v2(gs.vpc("v1", 100), S1, S2, *states, host_ip=HOST), HOST))
    planner = Planner(state, HOST, mode)
    planner.set_tunnel(9)
    planner.set_interfaces([("tap-a", "pa", 3, 0)])
    planner.rebuild()
    planner.set_route_port(ROUTE_PORT)
    return planner


def _text(flows: list[Flow]) -> list[str]:
    return sorted(f.text(TABLE_NAMES) for f in flows)


def test_routing_miss_punts_with_router_and_segment_in_the_addresses() -> None:
    planner = _planner(PORT_A, ROUTER)
    (miss,) = [f for f in planner.flows(BASE_OWNER) if f.table == Table.L3_ROUTING]
    assert miss.text(TABLE_NAMES) == (
        "table=L3_ROUTING, priority=0 actions=set_field:0a:cb:00:00:00:00->dl_src,"
        "move:reg2[0..31]->dl_src[0..31],set_field:0a:cb:00:00:00:00->dl_dst,"
        "move:reg0[0..23]->dl_dst[0..23],output:7"
    )
    assert planner.set_route_port(None) >= {BASE_OWNER}
    (drop,) = [f for f in planner.flows(BASE_OWNER) if f.table == Table.L3_ROUTING]
    assert drop.actions == () and drop.goto is None


def test_every_routed_segment_gets_an_index_and_a_reentry_flow() -> None:
    planner = _planner(PORT_A, ROUTER)
    assert planner.route_vlans == {101: 1, 102: 2}
    assert _text(planner.flows(route_segment_owner(102))) == [
        "table=CLASSIFY, priority=100, in_port=7, vlan_vid=0x1002 actions=pop_vlan,"
        "set_field:0x66->reg0,set_field:0x0->reg1,goto_table:L2_LOOKUP"
    ]
    assert planner.flows(route_segment_owner(102))[0].cookie == cookies.cookie(Kind.ROUTE, "102")
    # Removing s1 from the router frees its index; the owner then has no flows.
    owners = set()
    for o in planner.state.apply(
        decode_v2(gs.goal_state_v2(gs.router("r1", DVR, ["s2"], revision=2), host_ip=HOST), HOST)
    ):
        owners |= planner.touch(o.request.type, o.request.id)
    assert route_segment_owner(101) in owners
    assert planner.route_vlans == {102: 2}
    assert planner.flows(route_segment_owner(101)) == []


def test_route_targets_follow_the_proactive_rewrite_rule() -> None:
    planner = _planner(PORT_A, NB_B, ROUTER)
    (to_b,) = planner.route_targets(neighbor_owner("pb"))
    assert (to_b.tag, to_b.ip, to_b.dst_mac, to_b.src_mac, to_b.vni) == (
        routing.router_tag("r1"), "10.1.2.20", "fa:16:3e:00:00:0b", DVR, 102
    )  # fmt: skip
    (to_a,) = planner.route_targets(port_owner("pa"))
    assert to_a.src_mac == "fa:16:3e:aa:00:01"  # local: its own gateway MAC
    # The proactive flow is exactly the cache flow without an idle timeout.
    (flow,) = [f for f in planner.flows(neighbor_owner("pb")) if f.table == Table.L3_ROUTING]
    assert flow == routing.cache_flow(to_b, cookies.cookie(Kind.NEIGHBOR, "pb"), 0)


def test_on_demand_mode_installs_no_neighbour_host_routes_but_keeps_local_ones() -> None:
    planner = _planner(PORT_A, NB_B, ROUTER, mode=ON_DEMAND)
    assert [f for f in planner.flows(neighbor_owner("pb")) if f.table == Table.L3_ROUTING] == []
    assert [f for f in planner.flows(port_owner("pa")) if f.table == Table.L3_ROUTING]
    assert len(planner.route_targets(neighbor_owner("pb"))) == 1  # the C engine still knows it


class _Cache:
    def __init__(self) -> None:
        self.added: list[Flow] = []
        self.deleted: list[tuple[int, int]] = []

    def apply_bundle(self, deletes: list[Flow], adds: list[Flow]) -> None:
        self.added += adds

    def delete_flows(self, cookie: int, cookie_mask: int) -> None:
        self.deleted.append((cookie, cookie_mask))


def test_driver_mirrors_the_planner_into_the_engine_and_caches_on_hits() -> None:
    planner = _planner(PORT_A, NB_B, ROUTER, mode=ON_DEMAND)
    engine, cache = RouteEngine(), _Cache()
    driver = RouteDriver(planner, engine, idle_timeout=7, cache=cache)
    assert driver.apply(planner.all_owners()) > 0
    # First programming clears any cache flows a previous run left for the neighbour.
    assert cache.deleted == [(cache_cookie("pb"), cookies.OWNER_MASK)]
    assert engine.sizes() == {"routers": 1, "segments": 2, "destinations": 2, "queued": 0}
    assert driver.apply(planner.all_owners()) == 0  # nothing changed: nothing sent
    tag = routing.router_tag("r1")
    assert driver.knows(tag, "10.1.2.20") and not driver.knows(tag, "10.1.2.99")
    # The engine rewrites like the proactive flow would.
    verdict, out = engine.rewrite(punted(dst="10.1.2.20", tag=tag))
    assert verdict.name == "FORWARD" and out[:12] == bytes.fromhex("fa163e00000b" + DVR.replace(":", ""))
    # A hit on the neighbour installs its cache flow with the idle timeout and its own cookie.
    flow = driver.cache_hit(tag, "10.1.2.20")
    assert flow is not None and cache.added == [flow]
    assert flow.idle_timeout == 7 and flow.cookie == cache_cookie("pb") and flow.table == Table.L3_ROUTING
    assert driver.cache_hit(tag, "10.1.1.10") is None  # a local port keeps its proactive route
    driver.idle_timeout = 0  # caching off: the C path keeps every packet, nothing is installed
    assert driver.cache_hit(tag, "10.1.2.20") is None and cache.added == [flow]
    driver.idle_timeout = 7
    # Deleting the neighbour removes it from the engine and its cache flows by cookie.
    owners = set()
    for o in planner.state.apply(
        decode_v2(
            gs.goal_state_v2(
                gs.neighbor("pb", "v1", "s2", "10.1.2.20", "fa:16:3e:00:00:0b", "172.31.0.12",
                            kind=gs.pb.L3, op=gs.DELETE),
                host_ip=HOST,
            ),
            HOST,
        )
    ):  # fmt: skip
        owners |= planner.touch(o.request.type, o.request.id)
    driver.apply(owners)
    assert not driver.knows(tag, "10.1.2.20") and engine.sizes()["destinations"] == 1
    assert cache.deleted == [(cache_cookie("pb"), cookies.OWNER_MASK)] * 2
    engine.close()
