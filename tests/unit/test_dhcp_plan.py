"""DHCP planning and the driver: golden steering flows, touched owners, engine updates by diff,
the server id's ARP answer and who owns it."""

from __future__ import annotations

from typing import Any

from agent.dhcp.driver import DhcpDriver
from agent.dhcp.leases import Settings
from agent.model.decode import decode_v2
from agent.model.resources import ResourceType
from agent.model.state import DesiredState
from agent.planner import cookies, dhcp
from agent.planner.cookies import Kind
from agent.planner.pipeline import TABLE_NAMES, Table
from agent.planner.plan import Planner
from agent.sandbox import goalstates as gs

HOST = "172.31.0.11"
DHCP_PORT = 7
BASE = (
    gs.vpc("v1", 100),
    gs.subnet("s1", "v1", "10.0.1.0/24", 100, gateway_ip="10.0.1.1", gateway_mac="fa:16:3e:00:00:01"),
)
PORT = gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05")
ENTRY = gs.dhcp("d1", "s1", "fa:16:3e:00:00:05", "10.0.1.5", "vm1")


def _apply(state: DesiredState, *states: Any) -> None:
    state.apply(decode_v2(gs.goal_state_v2(*states, host_ip=HOST), HOST))


def _planner(*states: Any) -> Planner:
    state = DesiredState()
    _apply(state, *states)
    planner = Planner(state, HOST)
    planner.rebuild()
    return planner


def test_steering_flows_golden() -> None:
    planner = _planner(*BASE, PORT, ENTRY)
    planner.set_interfaces([("tap-p1", "p1", 3, 0)])
    assert planner.flows(dhcp.port_owner("p1")) == [], "no responder port yet"
    assert planner.set_dhcp_port(DHCP_PORT) == {dhcp.port_owner("p1"), dhcp.subnet_owner("s1")}
    text = sorted(f.text(TABLE_NAMES) for f in planner.flows(dhcp.port_owner("p1")))
    assert text == [
        "table=CLASSIFY, priority=100, in_port=7, dl_src=0a:ca:00:00:00:03 "
        "actions=set_field:fa:16:3e:00:00:01->dl_src,output:3",
        "table=DHCP, priority=100, in_port=3 actions=set_field:0a:ca:00:00:00:03->dl_src,output:7",
        "table=PORT_SECURITY, priority=105, in_port=3, dl_src=fa:16:3e:00:00:05, dl_type=0x800, "
        "nw_proto=17, udp_src=67, udp_dst=67 actions=goto_table:DHCP",
        "table=PORT_SECURITY, priority=105, in_port=3, dl_src=fa:16:3e:00:00:05, dl_type=0x800, "
        "nw_proto=17, udp_src=68, udp_dst=67 actions=goto_table:DHCP",
    ]


def test_changes_touch_their_dhcp_owners() -> None:
    planner = _planner(*BASE, PORT, ENTRY)
    planner.set_dhcp_port(DHCP_PORT)
    assert dhcp.port_owner("p1") in planner.set_interfaces([("tap-p1", "p1", 3, 0)])
    assert planner.touch(ResourceType.DHCP, "d1") == {dhcp.lease_owner("d1")}
    assert dhcp.lease_owner("d1") in planner.touch(ResourceType.SUBNET, "s1")
    # Same VNI (a new gateway MAC, DHCP turned off...): the port's steering and reply source too.
    assert dhcp.port_owner("p1") in planner.touch(ResourceType.SUBNET, "s1")
    assert {dhcp.port_owner("p1"), dhcp.lease_owner("d1")} <= planner.all_owners()


class RecordingEngine:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, *args))


def test_driver_sends_only_differences() -> None:
    planner = _planner(*BASE, PORT, ENTRY)
    planner.set_dhcp_port(DHCP_PORT)
    planner.set_interfaces([("tap-p1", "p1", 3, 0)])
    engine = RecordingEngine()
    driver = DhcpDriver(planner.state, Settings(), engine)  # type: ignore[arg-type]
    owners = planner.all_owners()
    assert driver.apply(owners, planner.bindings, planner.dhcp_ofport, planner.ifindexes) == 2
    names = [c[0] for c in engine.calls]
    assert names.index("set_subnet") < names.index("set_lease"), "a lease's profile goes in first"
    assert ("set_lease", 100, "fa:16:3e:00:00:05", "10.0.1.5", 1, "vm1") in engine.calls
    assert ("set_port", 3, 100, ["fa:16:3e:00:00:05"]) in engine.calls
    engine.calls.clear()
    assert driver.apply(owners, planner.bindings, planner.dhcp_ofport, planner.ifindexes) == 0
    assert engine.calls == []
    # DELETE of the entry removes the lease and its now unused subnet profile
    _apply(planner.state, *BASE[:1], gs.dhcp("d1", "s1", "fa:16:3e:00:00:05", "10.0.1.5", op=gs.DELETE))
    driver.apply(
        planner.touch(ResourceType.DHCP, "d1"), planner.bindings, planner.dhcp_ofport, planner.ifindexes
    )
    assert engine.calls == [("del_lease", 100, "fa:16:3e:00:00:05"), ("del_subnet", 1)]


# ---------------------------------------------------------------- the server id answers ARP


def _push(planner: Planner, *states: Any) -> set:
    owners: set = set()
    for outcome in planner.state.apply(decode_v2(gs.goal_state_v2(*states, host_ip=HOST), HOST)):
        if outcome.changed:
            owners |= planner.touch(outcome.request.type, outcome.request.id)
    return owners


def _serving(*states: Any) -> Planner:
    planner = _planner(*states)
    planner.set_interfaces([("tap-p1", "p1", 3, 0)])
    planner.set_dhcp_port(DHCP_PORT)
    return planner


def _arp_answers(planner: Planner, ip: str) -> list[tuple[tuple, str]]:
    """Every owner's ARP_RESPONDER flow for ``ip``: (owner, flow text)."""
    return sorted(
        (owner, f.text(TABLE_NAMES))
        for owner in planner.all_owners()
        for f in planner.flows(owner)
        if f.table == Table.ARP_RESPONDER and f"arp_tpa={ip} " in f.text(TABLE_NAMES)
    )


def test_server_id_answers_arp_without_a_router_golden() -> None:
    planner = _serving(*BASE, PORT, ENTRY)
    flows = planner.flows(dhcp.subnet_owner("s1"))
    assert [f.text(TABLE_NAMES) for f in flows] == [
        "table=ARP_RESPONDER, priority=95, reg0=0x64, dl_type=0x806, arp_op=1, arp_tpa=10.0.1.1 "
        "actions=move:dl_src[0..47]->dl_dst[0..47],set_field:fa:16:3e:00:00:01->dl_src,set_field:2->arp_op,"
        "move:arp_sha[0..47]->arp_tha[0..47],move:arp_spa[0..31]->arp_tpa[0..31],"
        "set_field:fa:16:3e:00:00:01->arp_sha,set_field:10.0.1.1->arp_spa,output:IN_PORT"
    ]
    assert {f.cookie for f in flows} == {cookies.cookie(Kind.DHCP, "subnet:s1")}
    assert [owner for owner, _text in _arp_answers(planner, "10.0.1.1")] == [dhcp.subnet_owner("s1")]


def test_server_id_answered_only_where_the_subnet_is_served() -> None:
    unbound = _planner(*BASE, PORT, ENTRY)
    unbound.set_dhcp_port(DHCP_PORT)
    assert unbound.flows(dhcp.subnet_owner("s1")) == [], "no port of the subnet on this host"
    no_responder = _planner(*BASE, PORT, ENTRY)
    no_responder.set_interfaces([("tap-p1", "p1", 3, 0)])
    assert no_responder.flows(dhcp.subnet_owner("s1")) == [], "no responder to answer for"
    off = gs.subnet("s1", "v1", "10.0.1.0/24", 100, gateway_ip="10.0.1.1", gateway_mac="fa:16:3e:00:00:01")
    off.configuration.dhcp_enable = False
    assert _serving(BASE[0], off, PORT, ENTRY).flows(dhcp.subnet_owner("s1")) == [], "DHCP off"

    planner = _serving(*BASE, PORT, ENTRY)
    assert planner.flows(dhcp.subnet_owner("s1"))
    # The last port goes: the host serves the subnet no more, the answer goes with it.
    owners = _push(planner, BASE[0], gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", op=gs.DELETE))
    assert dhcp.subnet_owner("s1") in owners
    assert planner.flows(dhcp.subnet_owner("s1")) == []
    # ... and comes back with a port bound again, and DHCP turned off in the subnet removes it.
    owners = _push(planner, BASE[0], gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", revision=2))
    assert dhcp.subnet_owner("s1") in owners | planner.set_interfaces([("tap-p1", "p1", 3, 0)])
    assert planner.flows(dhcp.subnet_owner("s1"))
    off.configuration.revision_number = 2
    assert dhcp.subnet_owner("s1") in _push(planner, BASE[0], off)
    assert planner.flows(dhcp.subnet_owner("s1")) == []


def test_a_router_of_the_subnet_owns_the_gateway_answer() -> None:
    """One flow for the gateway IP whoever answers: the router while it serves the subnet, the
    subnet's DHCP owner before and after."""
    planner = _serving(*BASE, PORT, ENTRY)
    owners = _push(planner, gs.router("r1", "fe:16:11:00:00:01", ["s1"]))
    assert dhcp.subnet_owner("s1") in owners
    assert planner.flows(dhcp.subnet_owner("s1")) == []
    ((owner, text),) = _arp_answers(planner, "10.0.1.1")
    assert owner == (Kind.ROUTER, "r1") and "priority=100," in text and "fa:16:3e:00:00:01->arp_sha" in text
    owners = _push(planner, gs.router("r1", "fe:16:11:00:00:01", ["s1"], op=gs.DELETE, revision=2))
    assert dhcp.subnet_owner("s1") in owners
    assert [owner for owner, _text in _arp_answers(planner, "10.0.1.1")] == [dhcp.subnet_owner("s1")]


def test_without_a_gateway_the_first_address_answers_below_its_holder() -> None:
    """The server id of a subnet without a gateway is its first address, which a VM may hold: the
    VM's answer (priority 100) wins over the responder's (95), two flows, two keys."""
    subnet = gs.subnet("s1", "v1", "10.0.1.0/24", 100)
    holder = gs.port("p2", "v1", "s1", "10.0.1.1", "fa:16:3e:00:00:02")
    planner = _planner(BASE[0], subnet, PORT, ENTRY, holder)
    planner.set_interfaces([("tap-p1", "p1", 3, 0), ("tap-p2", "p2", 4, 0)])
    planner.set_dhcp_port(DHCP_PORT)
    answers = _arp_answers(planner, "10.0.1.1")
    assert [(owner, "priority=95," in text) for owner, text in answers] == [
        ((Kind.PORT, "p2"), False),
        (dhcp.subnet_owner("s1"), True),
    ]
    assert f"set_field:{dhcp.RESPONDER_MAC}->arp_sha" in answers[1][1]
