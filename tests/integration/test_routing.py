"""Distributed routing with real traffic: two hosts, two subnets on one router.

VM a (subnet 1, host1) reaches VM b (subnet 2, host2) and VM c (subnet 2, host1). On the
underlay the routed frame carries host1's DVR MAC; inside b it arrives from subnet 2's gateway
MAC with TTL 63. Gateways answer ARP and ping on every host; a static route sends a prefix
through a next-hop VM; deleting the router removes routing and every router flow.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.planner.cookies import Kind, cookie
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.two_subnets import DVR, GW1, GW2, deploy, goal_state
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import missing, require_ovs
from tests.support.traffic import (
    assert_flow_table_clean,
    assert_reaches,
    assert_unreachable,
    capture,
    dump_cookies,
)

pytestmark = pytest.mark.integration
require_ovs()
if shutil.which("tcpdump") is None:
    missing("tcpdump is not installed")

# vm → (host, subnet, ip, mac, gateway ip)
VMS = {
    "a": ("host1", "s1", "10.1.1.10", "fa:16:3e:00:00:0a", GW1[0]),
    "b": ("host2", "s2", "10.1.2.20", "fa:16:3e:00:00:0b", GW2[0]),
    "c": ("host1", "s2", "10.1.2.30", "fa:16:3e:00:00:0c", GW2[0]),
}
STATIC = [("s1", "10.9.0.0/16", "10.1.2.20", 0)]  # 10.9/16 from subnet 1 goes through VM b


def _goal_state(box: Sandbox, host: str) -> pb.GoalStateV2:
    return goal_state(box, host, VMS, gs.router("r1", DVR[host], ["s1", "s2"], STATIC))


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with scratch_sandbox() as sb:
        deploy(sb, VMS, lambda host: _goal_state(sb, host))
        yield sb


def test_routed_across_hosts_with_the_dvr_mac_on_the_wire(box: Sandbox) -> None:
    assert_reaches(box, "a", VMS["b"][2])  # warms the underlay neighbour too
    with (
        capture(box.underlay_netns, "ul0", "udp port 4789", ("-c", "4")) as wire,
        capture(box.vms()["b"].netns, "eth0", "icmp[icmptype] = icmp-echo", verbose=True) as inside,
    ):
        assert box.ping("a", VMS["b"][2], count=2).returncode == 0
    requests = [p for p in wire if "10.1.1.10 > 10.1.2.20" in p]
    assert requests, wire
    # Inner Ethernet header of the encapsulated request: source = host1's DVR MAC.
    assert all(f"{DVR['host1']} > {VMS['b'][3]}" in p for p in requests), requests
    assert inside, "no echo request reached b"
    for packet in inside:
        assert f"{GW2[1]} > {VMS['b'][3]}" in packet, packet  # b sees its gateway as source
        assert "ttl 63" in packet, packet  # one routing hop: TTL 64 → 63


def test_routed_on_one_host(box: Sandbox) -> None:
    with capture(box.vms()["c"].netns, "eth0", "icmp[icmptype] = icmp-echo", verbose=True) as inside:
        assert_reaches(box, "a", VMS["c"][2])
    assert inside and all(f"{GW2[1]} > {VMS['c'][3]}" in p and "ttl 63" in p for p in inside), inside


@pytest.mark.parametrize("vm", sorted(VMS))
def test_every_vm_pings_its_gateway_and_gets_its_arp(box: Sandbox, vm: str) -> None:
    _host, _sn, _ip, _mac, gw = VMS[vm]
    box.vm_exec(vm, ["ip", "neigh", "flush", "dev", "eth0"], check=True)
    assert_reaches(box, vm, gw)
    neigh = box.vm_exec(vm, ["ip", "neigh", "show", gw], check=True).stdout
    assert (GW1 if gw == GW1[0] else GW2)[1] in neigh, neigh


def test_static_route_goes_through_the_next_hop_vm(box: Sandbox) -> None:
    with capture(box.vms()["b"].netns, "eth0", "icmp and dst host 10.9.0.5", ("-c", "2")) as at_next_hop:
        box.ping("a", "10.9.0.5", count=2)  # nobody answers: b receives but is no router
    assert len(at_next_hop) == 2, at_next_hop
    assert all(f"> {VMS['b'][3]}" in p for p in at_next_hop), at_next_hop


def test_router_delete_stops_routing_and_leaves_no_flows(box: Sandbox) -> None:
    for host in DVR:
        states = [gs.router("r1", DVR[host], [], op=gs.DELETE, revision=2)]
        (reply,) = box.push_message(host, gs.goal_state_v2(*states, host_ip=box.host(host).underlay_ip))
        assert [s.operation_status for s in reply.operation_statuses] == [pb.SUCCESS]
    assert_unreachable(box, "a", VMS["b"][2])
    assert_unreachable(box, "a", VMS["c"][2])
    for host in DVR:
        assert dump_cookies(box, host)[cookie(Kind.ROUTER, "r1")] == 0
        table = box.exec(host, ["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "br-int", "table=35"]).stdout
        assert [line for line in table.splitlines() if "priority=" in line and "priority=0" not in line] == []
        assert_flow_table_clean(box, host)
