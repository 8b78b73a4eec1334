"""On-demand routing through the C fast path, with real traffic and a real gRPC test controller.

Two hosts, a router with two subnets; each agent gets only its own ports (no L3 neighbours) and
the address of its own test controller. A ping from a (subnet 1, host1) to b (subnet 2, host2)
misses L3_ROUTING, reaches the C engine, which hands it to the agent; the agent asks its
controller (RequestGoalStates ON_DEMAND with the packet's 5-tuple and VNI), the controller pushes
the neighbour back over gRPC and answers SUCCESS, and the held packet is forwarded. A FAILURE
answer drops the packet and installs nothing. In on_demand mode a known neighbour's first packet
is rewritten by C and its host route is then cached in OVS with an idle timeout.
"""

from __future__ import annotations

import contextlib
import pathlib
import re
import shutil
import time
from collections.abc import Iterator

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.planner.cookies import Kind, cookie
from agent.sandbox import goalstates as gs
from agent.sandbox.controller import Handler, TestController, serve
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from agent.sandbox.two_subnets import DVR, GW1, GW2, goal_state, neighbour
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import missing, require_ovs
from tests.support.traffic import assert_reaches, assert_unreachable, capture

pytestmark = pytest.mark.integration
require_ovs()
if shutil.which("tcpdump") is None:
    missing("tcpdump is not installed")

# vm → (host, subnet, ip, mac, gateway ip)
VMS = {
    "a": ("host1", "s1", "10.1.1.10", "fa:16:3e:00:00:0a", GW1[0]),
    "b": ("host2", "s2", "10.1.2.20", "fa:16:3e:00:00:0b", GW2[0]),
    "d": ("host2", "s2", "10.1.2.40", "fa:16:3e:00:00:0d", GW2[0]),  # the controller refuses it
    "e": ("host2", "s2", "10.1.2.60", "fa:16:3e:00:00:0e", GW2[0]),  # deleted and asked for again
}
REFUSED = {VMS["d"][2]}
SLOW = "10.1.2.50"  # the controller answers it only after the agent's hold (1 s below) is over


class _Controllers:
    """One test controller per host: it answers ON_DEMAND for a VM it knows by pushing that VM
    as an L3 neighbour to the asking host, then SUCCESS; REFUSED addresses get FAILURE."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.by_host = {host: TestController(self._handler(host)) for host in DVR}

    def _handler(self, host: str) -> Handler:
        def handle(req: pb.HostRequest.ResourceStateRequest) -> int:
            if req.request_type != pb.ON_DEMAND:
                return pb.SUCCESS
            if req.destination_ip == SLOW:
                time.sleep(3)
                return pb.FAILURE
            vm = next((v for v, spec in VMS.items() if spec[2] == req.destination_ip), None)
            if vm is None or req.destination_ip in REFUSED:
                return pb.FAILURE
            msg = gs.goal_state_v2(neighbour(self.box, VMS, vm), host_ip=self.box.host(host).underlay_ip)
            (reply,) = self.box.push_message(host, msg)
            assert {s.operation_status for s in reply.operation_statuses} == {pb.SUCCESS}, reply
            return pb.SUCCESS

        return handle


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Sandbox, _Controllers]]:
    with scratch_sandbox() as box:
        controllers = _Controllers(box)
        with contextlib.ExitStack() as stack:
            for host in DVR:
                address = stack.enter_context(
                    serve(controllers.by_host[host], f"{box.root}/{host}-controller.sock", box.pki)
                )
                box.host_up(host, agent_args=("--controller", address))
            for vm, (host, _sn, ip, mac, gw) in VMS.items():
                box.vm_add(host, vm, mac, f"{ip}/24", gw=gw, iface_id=f"port-{vm}")
            for host in DVR:
                (reply,) = box.push_message(host, goal_state(box, host, VMS, neighbours=False))
                assert {s.operation_status for s in reply.operation_statuses} == {pb.SUCCESS}, reply
            yield box, controllers
            for host in DVR:  # agents first: their controllers go away with the stack
                box.stop_agent(host)


def _routing(box: Sandbox, host: str) -> dict:
    return box.control(host, "status")["routing"]


def _table(box: Sandbox, host: str, table: int) -> list[str]:
    out = box.exec(host, ["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "br-int", f"table={table}"]).stdout
    return [line.strip() for line in out.splitlines() if "priority=" in line]


def test_unknown_destination_asks_the_controller_and_the_ping_then_succeeds(
    setup: tuple[Sandbox, _Controllers],
) -> None:
    box, controllers = setup
    assert box.control("host1", "neighbours") == []  # only ports were pushed
    # --immediate-mode: the packet comes within ms of the end of the capture, before libpcap's
    # buffer timeout would hand it over.
    echo = "icmp[icmptype] = icmp-echo"
    with capture(box.vms()["b"].netns, "eth0", echo, ("--immediate-mode",), verbose=True) as inside:
        first = box.vm_exec("a", ["ping", "-c", "1", "-W", "5", VMS["b"][2]])
    assert first.returncode == 0, first.stdout + first.stderr  # the very first packet got through
    (request,) = [
        r
        for r in controllers.by_host["host1"].state_requests(pb.ON_DEMAND)
        if r.destination_ip == VMS["b"][2]
    ]
    assert (request.tunnel_id, request.source_ip, request.destination_ip) == (101, VMS["a"][2], VMS["b"][2])
    assert (request.ethertype, request.protocol, request.source_port, request.destination_port) == (
        pb.IPV4, pb.ICMP, 0, 0,
    )  # fmt: skip
    assert request.request_id
    # b's host asked its own controller for a's address on the way back.
    back = controllers.by_host["host2"].state_requests(pb.ON_DEMAND)
    assert [(r.tunnel_id, r.destination_ip) for r in back] == [(102, VMS["a"][2])]
    # The held packet went through the same C rewrite: gateway MAC as source inside b, TTL 63.
    assert inside and all(f"{GW2[1]} > {VMS['b'][3]}" in p and "ttl 63" in p for p in inside), inside
    stats = _routing(box, "host1")
    assert stats["punts"]["forwarded"] >= 1 and stats["counters"]["punted"] >= 1
    # The pushed neighbour is now programmed (proactive mode): later packets never leave OVS.
    punted = stats["counters"]["punted"]
    assert_reaches(box, "a", VMS["b"][2])
    assert _routing(box, "host1")["counters"]["punted"] == punted
    assert any("nw_dst=10.1.2.20" in line for line in _table(box, "host1", 35))


def test_a_destination_deleted_and_asked_for_again_gets_its_held_packet_through_every_time(
    setup: tuple[Sandbox, _Controllers], tmp_path: pathlib.Path
) -> None:
    """The released packet goes through OVS's flow tables as they are after the push (a
    packet-out), not through the datapath flow cached for that destination before its deletion,
    which still drops for a few ms after the flows are back (a third of these pings were lost
    when the packet was re-sent on the route port)."""
    box, controllers = setup
    config = tmp_path / "agent.toml"  # no cache flows: every packet to a neighbour takes the C path
    config.write_text('[routing]\nmode = "on_demand"\ncache_idle_timeout = 0\n')
    address = f"unix:{box.root}/host1-controller.sock"
    box.restart_agent("host1", agent_args=("--controller", address, "--config", str(config)))
    wait_for(lambda: box.control("host1", "status")["dataplane_ready"], 20, "host1 agent ready")
    assert_reaches(box, "a", VMS["b"][2])  # the underlay neighbour: the first VXLAN packet may wait for it
    forgotten = neighbour(box, VMS, "e")
    forgotten.operation_type = pb.DELETE
    host_ip = box.host("host1").underlay_ip
    for _ in range(10):
        ping = box.vm_exec("a", ["ping", "-c", "1", "-W", "3", VMS["e"][2]])
        assert ping.returncode == 0, ping.stdout + ping.stderr
        (reply,) = box.push_message("host1", gs.goal_state_v2(forgotten, host_ip=host_ip))
        assert {s.operation_status for s in reply.operation_statuses} == {pb.SUCCESS}, reply
    asked = [
        r
        for r in controllers.by_host["host1"].state_requests(pb.ON_DEMAND)
        if r.destination_ip == VMS["e"][2]
    ]
    assert len(asked) == 10  # every ping was the whole round trip: unknown, asked, pushed, released


def test_failure_reply_drops_the_packet_and_installs_nothing(setup: tuple[Sandbox, _Controllers]) -> None:
    box, controllers = setup
    assert_unreachable(box, "a", VMS["d"][2])
    asked = [
        r for r in controllers.by_host["host1"].state_requests(pb.ON_DEMAND) if r.destination_ip in REFUSED
    ]
    assert asked, "no RequestGoalStates for the refused destination"
    assert len(asked) <= 2  # one request per destination in flight, not one per packet
    wait_for(lambda: _routing(box, "host1")["punts"].get("dropped_failure", 0) >= 1, 5, "a dropped packet")
    assert all(n["id"] != "port-d" for n in box.control("host1", "neighbours"))
    assert not any(VMS["d"][2] in line for line in _table(box, "host1", 35))
    assert _routing(box, "host1")["punts"]["holding"] == 0


def test_on_demand_mode_rewrites_the_first_packet_in_c_and_caches_the_route(
    setup: tuple[Sandbox, _Controllers],
) -> None:
    box, _controllers = setup
    known = gs.goal_state_v2(neighbour(box, VMS, "b"), host_ip=box.host("host1").underlay_ip)
    (reply,) = box.push_message("host1", known)  # (as an ON_DEMAND answer leaves it)
    assert {s.operation_status for s in reply.operation_statuses} == {pb.SUCCESS}, reply
    assert_reaches(box, "a", VMS["b"][2])  # the underlay neighbour and the way back, before C's turn
    address = f"unix:{box.root}/host1-controller.sock"
    box.restart_agent("host1", agent_args=("--controller", address, "--routing-mode", "on_demand"))
    wait_for(lambda: box.control("host1", "status")["dataplane_ready"], 20, "host1 agent ready")
    assert [n["id"] for n in box.control("host1", "neighbours")] == ["port-b"]  # persisted
    # No host route for the neighbour: on_demand installs none ahead.
    assert not any("nw_dst=10.1.2.20" in line for line in _table(box, "host1", 35))
    before = _routing(box, "host1")["counters"]["forwarded"]
    first = box.vm_exec("a", ["ping", "-c", "1", "-W", "3", VMS["b"][2]])
    assert first.returncode == 0, first.stdout
    assert _routing(box, "host1")["counters"]["forwarded"] == before + 1  # rewritten by C
    cache = cookie(Kind.ROUTE_CACHE, "port-b")

    def cached() -> list[str]:
        return [line for line in _table(box, "host1", 35) if f"cookie={cache:#x}" in line]

    wait_for(cached, 5, "the on-demand cache flow")
    (flow,) = cached()
    assert "idle_timeout=10" in flow and "nw_dst=10.1.2.20" in flow, flow

    def matched() -> int:
        return sum(int(m) for m in re.findall(r"n_packets=(\d+)", " ".join(cached())))

    box.vm_exec("a", ["ping", "-c", "3", "-i", "0.2", "-W", "1", VMS["b"][2]], check=True)
    # Later packets match the cached flow (OVS updates its counters from the datapath lazily) and
    # never reach the C path again.
    wait_for(lambda: matched() >= 3, 5, "packets on the cache flow")
    stats = _routing(box, "host1")
    assert stats["counters"]["forwarded"] == before + 1 and stats["cache_installs"] == 1


def test_cached_route_expires_when_idle_and_a_held_packet_times_out(
    setup: tuple[Sandbox, _Controllers], tmp_path: pathlib.Path
) -> None:
    """With ``cache_idle_timeout = 2``, OVS expires the cached host route once idle (the agent never
    puts it back: it is outside the desired state) and the next packet takes the C path again;
    with ``hold_seconds = 1``, a packet whose controller answer comes too late is dropped and
    counted, and nothing stays held."""
    box, _controllers = setup
    config = tmp_path / "agent.toml"
    config.write_text('[routing]\nmode = "on_demand"\ncache_idle_timeout = 2\nhold_seconds = 1.0\n')
    address = f"unix:{box.root}/host1-controller.sock"
    box.restart_agent("host1", agent_args=("--controller", address, "--config", str(config)))
    wait_for(lambda: box.control("host1", "status")["dataplane_ready"], 20, "host1 agent ready")
    # b known as a neighbour (as an earlier ON_DEMAND answer leaves it): no controller round trip
    # races the 1 s hold on the first ping.
    known = gs.goal_state_v2(neighbour(box, VMS, "b"), host_ip=box.host("host1").underlay_ip)
    (reply,) = box.push_message("host1", known)
    assert {s.operation_status for s in reply.operation_statuses} == {pb.SUCCESS}, reply
    cache = cookie(Kind.ROUTE_CACHE, "port-b")

    def cached() -> list[str]:
        return [line for line in _table(box, "host1", 35) if f"cookie={cache:#x}" in line]

    # An earlier test's cache flow (idle_timeout=10) may still be live: start from none.
    box.exec(
        "host1", ["ovs-ofctl", "-O", "OpenFlow14", "del-flows", "br-int", f"cookie={cache:#x}/-1"], check=True
    )
    assert_reaches(box, "a", VMS["b"][2])  # (its warm-up covers the way back's first contact)
    wait_for(cached, 5, "the on-demand cache flow")
    assert "idle_timeout=2" in cached()[0], cached()
    installs = _routing(box, "host1")["cache_installs"]
    wait_for(lambda: not cached(), 20, "OVS to expire the idle cache flow")
    forwarded = _routing(box, "host1")["counters"]["forwarded"]
    box.vm_exec("a", ["ping", "-c", "1", "-W", "3", VMS["b"][2]], check=True)
    stats = _routing(box, "host1")
    assert stats["counters"]["forwarded"] == forwarded + 1  # through C again, then cached again
    wait_for(lambda: _routing(box, "host1")["cache_installs"] == installs + 1, 5, "the route cached again")

    dropped = _routing(box, "host1")["punts"].get("dropped_timeout", 0)
    late = box.vm_exec("a", ["ping", "-c", "1", "-W", "2", SLOW])
    assert late.returncode != 0, late.stdout
    wait_for(
        lambda: _routing(box, "host1")["punts"].get("dropped_timeout", 0) > dropped,
        5,
        "the held packet dropped",
    )
    wait_for(lambda: _routing(box, "host1")["punts"]["holding"] == 0, 10, "nothing left held")
