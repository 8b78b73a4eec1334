"""Routing planner: router flows, host routes owned by destinations, DVR MAC changes, deletes."""

from __future__ import annotations

from agent.model.decode import decode_v2
from agent.model.resources import ResourceType
from agent.model.state import DesiredState
from agent.planner.pipeline import TABLE_NAMES, Table, route_priority
from agent.planner.plan import Planner, neighbor_owner, port_owner, router_owner
from agent.sandbox import goalstates as gs

HOST = "172.31.0.11"
S1 = gs.subnet("s1", "v1", "10.1.1.0/24", 101, "10.1.1.1", "fa:16:3e:aa:00:01", op=gs.CREATE)
S2 = gs.subnet("s2", "v1", "10.1.2.0/24", 102, "10.1.2.1", "fa:16:3e:aa:00:02", op=gs.CREATE)
PORT_A = gs.port("pa", "v1", "s1", "10.1.1.10", "fa:16:3e:00:00:0a")
NB_B = gs.neighbor("pb", "v1", "s2", "10.1.2.20", "fa:16:3e:00:00:0b", "172.31.0.12", kind=gs.pb.L3)


def _planner(*states) -> Planner:
    state = DesiredState()
    state.apply(decode_v2(gs.goal_state_v2(gs.vpc("v1", 100), S1, S2, *states, host_ip=HOST), HOST))
    planner = Planner(state, HOST)
    planner.set_tunnel(9)
    planner.set_interfaces([("tap-a", "pa", 3, 0)])
    planner.rebuild()
    return planner


def _push(planner: Planner, *states) -> set:
    owners = set()
    for outcome in planner.state.apply(decode_v2(gs.goal_state_v2(*states, host_ip=HOST), HOST)):
        if outcome.changed:
            owners |= planner.touch(outcome.request.type, outcome.request.id)
    return owners


def _text(planner: Planner, owner, table: Table | None = None) -> list[str]:
    return sorted(f.text(TABLE_NAMES) for f in planner.flows(owner) if table is None or f.table == table)


def test_host_routes_rewrite_into_the_destination_segment() -> None:
    planner = _planner(PORT_A, NB_B, gs.router("r1", "fe:16:11:00:00:01", ["s1", "s2"]))
    (to_b,) = _text(planner, neighbor_owner("pb"), Table.L3_ROUTING)
    assert "priority=1320" in to_b and "nw_dst=10.1.2.20" in to_b
    assert to_b.endswith(
        "actions=dec_ttl,set_field:fe:16:11:00:00:01->dl_src,set_field:fa:16:3e:00:00:0b->dl_dst,"
        "set_field:0x66->reg0,goto_table:L2_LOOKUP"
    )
    (to_a,) = _text(planner, port_owner("pa"), Table.L3_ROUTING)
    # Local destination: it sees its own gateway as source straight away.
    assert "set_field:fa:16:3e:aa:00:01->dl_src" in to_a and "set_field:0x65->reg0" in to_a


def test_router_owns_gateway_answers_entry_and_restore() -> None:
    planner = _planner(PORT_A, gs.router("r1", "fe:16:11:00:00:01", ["s1", "s2"]))
    flows = _text(planner, router_owner("r1"))
    tables = [f.split(",")[0] for f in flows]
    assert tables.count("table=ARP_RESPONDER") == 2  # one per gateway IP
    assert tables.count("table=L3_GATEWAY") == 4  # echo + entry per subnet
    assert tables.count("table=DVR_RESTORE") == 2
    assert any("icmp_type=8" in f and "set_field:0->icmp_type" in f for f in flows)
    assert any(
        "dl_src=fe:16:11:00:00:00/ff:ff:ff:00:00:00" in f and "set_field:fa:16:3e:aa:00:02->dl_src" in f
        for f in flows
    )


def test_new_dvr_mac_replans_every_routed_flow() -> None:
    planner = _planner(PORT_A, NB_B, gs.router("r1", "fe:16:11:00:00:01", ["s1", "s2"]))
    owners = _push(planner, gs.router("r1", "fe:16:11:00:00:99", ["s1", "s2"], op=gs.UPDATE, revision=2))
    assert {router_owner("r1"), port_owner("pa"), neighbor_owner("pb")} <= owners
    (to_b,) = _text(planner, neighbor_owner("pb"), Table.L3_ROUTING)
    assert "set_field:fe:16:11:00:00:99->dl_src" in to_b


def test_static_route_longest_prefix_and_next_hop_resolution() -> None:
    routes = [("s1", "10.9.0.0/16", "10.1.2.20", 0), ("s1", "10.9.1.0/24", "10.1.2.20", 3)]
    planner = _planner(PORT_A, NB_B, gs.router("r1", "fe:16:11:00:00:01", ["s1", "s2"], routes))
    statics = _text(planner, router_owner("r1"), Table.L3_ROUTING)
    assert len(statics) == 2
    assert f"priority={route_priority(16)}," in statics[0] + statics[1]
    assert f"priority={route_priority(24, 3)}," in statics[0] + statics[1]
    assert all("nw_src=10.1.1.0/24" in f and "set_field:fa:16:3e:00:00:0b->dl_dst" in f for f in statics)


def test_static_route_waits_for_its_next_hop() -> None:
    routes = [("s1", "10.9.0.0/16", "10.1.2.20", 0)]
    planner = _planner(PORT_A, gs.router("r1", "fe:16:11:00:00:01", ["s1", "s2"], routes))
    assert _text(planner, router_owner("r1"), Table.L3_ROUTING) == []
    assert router_owner("r1") in _push(planner, NB_B)  # the next hop appeared: router re-planned
    assert len(_text(planner, router_owner("r1"), Table.L3_ROUTING)) == 1


def test_router_delete_removes_router_and_host_routes() -> None:
    planner = _planner(PORT_A, NB_B, gs.router("r1", "fe:16:11:00:00:01", ["s1", "s2"]))
    owners = _push(planner, gs.router("r1", "", [], op=gs.DELETE))
    assert {router_owner("r1"), port_owner("pa"), neighbor_owner("pb")} <= owners
    assert planner.flows(router_owner("r1")) == []
    assert _text(planner, neighbor_owner("pb"), Table.L3_ROUTING) == []
    assert _text(planner, port_owner("pa"), Table.L3_ROUTING) == []
    assert planner.state.resources[ResourceType.ROUTER] == {}
