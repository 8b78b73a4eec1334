"""A routed topology for tests and benchmarks: one VPC, two subnets on one router, a DVR MAC
per host, and VMs described as vm → (host, subnet, ip, mac, gateway ip)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from agent._pb import goalstate_pb2 as pb
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox, SandboxError

DVR = {"host1": "fe:16:11:00:00:01", "host2": "fe:16:11:00:00:02"}
GW1, GW2 = ("10.1.1.1", "fa:16:3e:aa:00:01"), ("10.1.2.1", "fa:16:3e:aa:00:02")
SUBNETS = (
    gs.subnet("s1", "v1", "10.1.1.0/24", 101, *GW1, op=gs.CREATE),
    gs.subnet("s2", "v1", "10.1.2.0/24", 102, *GW2, op=gs.CREATE),
)
Vms = Mapping[str, tuple[str, str, str, str, str]]


def neighbour(box: Sandbox, vms: Vms, vm: str) -> pb.NeighborState:
    """``vm`` as an L3 neighbour (port id ``port-<vm>``) behind its host's tunnel endpoint."""
    host, sn, ip, mac, _gw = vms[vm]
    return gs.neighbor(f"port-{vm}", "v1", sn, ip, mac, box.host(host).underlay_ip, kind=pb.L3)


def goal_state(
    box: Sandbox, host: str, vms: Vms, router: pb.RouterState | None = None, neighbours: bool = True
) -> pb.GoalStateV2:
    """What the controller sends ``host``: the VPC, both subnets, the router (by default with the
    host's DVR MAC and no static routes), its own VMs as ports and, unless ``neighbours`` is
    False, every other VM as an L3 neighbour."""
    states: Iterable = [
        gs.vpc("v1", 100, "10.1.0.0/16"),
        *SUBNETS,
        router or gs.router("r1", DVR[host], ["s1", "s2"]),
        *(gs.port(f"port-{vm}", "v1", sn, ip, mac) for vm, (h, sn, ip, mac, _gw) in vms.items() if h == host),
    ]
    if neighbours:
        states = [*states, *(neighbour(box, vms, vm) for vm, spec in vms.items() if spec[0] != host)]
    return gs.goal_state_v2(*states, host_ip=box.host(host).underlay_ip)


def deploy(box: Sandbox, vms: Vms, goal_state_of: Callable[[str], pb.GoalStateV2]) -> None:
    """Both hosts up with their agents, ``vms`` plugged (port id ``port-<vm>``), and each host's
    goal state (``goal_state_of(host)``) pushed and answered SUCCESS."""
    for host in DVR:
        box.host_up(host)
    for vm, (host, _sn, ip, mac, gw) in vms.items():
        box.vm_add(host, vm, mac, f"{ip}/24", gw=gw, iface_id=f"port-{vm}")
    for host in DVR:
        (reply,) = box.push_message(host, goal_state_of(host))
        if {s.operation_status for s in reply.operation_statuses} != {pb.SUCCESS}:
            raise SandboxError(f"{host} did not take its goal state: {reply}")
