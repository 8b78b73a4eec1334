"""DHCP planning and the driver: golden steering flows, touched owners, engine updates by diff."""

from __future__ import annotations

from typing import Any

from agent.dhcp.driver import DhcpDriver
from agent.dhcp.leases import Settings
from agent.model.decode import decode_v2
from agent.model.resources import ResourceType
from agent.model.state import DesiredState
from agent.planner import dhcp
from agent.planner.pipeline import TABLE_NAMES
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
    assert planner.set_dhcp_port(DHCP_PORT) == {dhcp.port_owner("p1")}
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
