"""Resources the agent cannot program, pushed next to good ones: each is refused on its own
(INVALID_ARG, the reason in the log), the good ones are programmed, and a SIGKILLed agent starts
again on the same state with the good flows in OVS and its VMs served (issue 14: before, these
were accepted, raised in planning, and the start-up resync crash-looped the agent).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
from collections.abc import Iterator

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.planner.cookies import Kind, cookie
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import HostInfo, Sandbox
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox, status_by_id
from tests.support.parts import missing, require_ovs
from tests.support.traffic import dump_cookies

pytestmark = pytest.mark.integration

require_ovs()
if shutil.which("busybox") is None:
    missing("busybox (for udhcpc) is not installed")

HOST = "host1"
VPC, VNI, SUBNET, PREFIX = "vpc-p", 4100, "sn-good", "10.41.0"
GATEWAY, GATEWAY_MAC, DVR_MAC = f"{PREFIX}.1", "aa:bb:cc:41:00:01", "fe:16:11:00:41:01"
REMOTE_HOST = "172.31.0.99"  # another compute host's tunnel endpoint (never contacted)
VMS = {
    "pa": ("port-a", "fa:16:3e:41:00:0a", f"{PREFIX}.10"),
    "pb": ("port-b", "fa:16:3e:41:00:0b", f"{PREFIX}.11"),
}
POISON_VM = ("pv", "port-v6pair", "fa:16:3e:41:00:0c", f"{PREFIX}.12")

# Resource id → a part of the reason it must be refused with.
POISONS = {
    "port-v6pair": "allowed address pair fd00::5/128: IPv6 is not supported by this agent",
    "r-v6route": "route destination fd00:99::/64: IPv6 is not supported by this agent",
    "sn-v6": "cidr fd00:41::/64: IPv6 is not supported by this agent",
    "r-v6subnet": "unknown subnet 'sn-v6'",
    "sn-mtu": "extra DHCP option mtu=70000: 70000 is not in 0..65535",
    "r-121": "its routes take 257 bytes in DHCP option 121",
    "sn-big": "the DHCP engine takes at most 1200",
    "dhcp-v6": "ipv6_address fd00:41::c: IPv6 is not supported by this agent",
    "port-ctx": "unknown subnet 'sn-ctx'",  # its subnet came as context (INFO) and was refused
}
CONTEXT_REASON = "extra DHCP option no-such-option=1: unknown option name"
GOOD = ("vpc-p", SUBNET, "port-a", "port-b", "dhcp-a", "nb-good", "r-good")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with scratch_sandbox() as sb:
        sb.host_up(HOST)
        for name, (port_id, mac, ip) in VMS.items():
            sb.vm_add(HOST, name, mac, f"{ip}/24", iface_id=port_id)
        sb.vm_add(HOST, POISON_VM[0], POISON_VM[2], f"{POISON_VM[3]}/24", iface_id=POISON_VM[1])
        yield sb


def _subnet(sid: str, cidr: str, vni: int, gateway: str = "", options: dict[str, str] | None = None):
    state = gs.subnet(sid, VPC, cidr, vni, gateway, GATEWAY_MAC if gateway else "", op=gs.CREATE)
    for name, value in (options or {}).items():
        state.configuration.extra_dhcp_options.add(name=name, value=value)
    return state


def _goal_state(host: HostInfo) -> pb.GoalStateV2:
    next_hop = VMS["pb"][2]
    # port-b may send from any address (a /0 pair, as for a VRRP VM): good, and stable on restart
    ports = [
        gs.port(
            pid, VPC, SUBNET, ip, mac, host.underlay_ip, pairs=[("0.0.0.0/0", "")] if pid == "port-b" else []
        )
        for pid, mac, ip in VMS.values()
    ]
    _vm, pid, mac, ip = POISON_VM
    return gs.goal_state_v2(
        gs.vpc(VPC, VNI, "10.41.0.0/16"),
        _subnet(SUBNET, f"{PREFIX}.0/24", VNI, GATEWAY),
        *ports,
        gs.dhcp("dhcp-a", SUBNET, VMS["pa"][1], VMS["pa"][2], "vm-a"),
        gs.neighbor("nb-good", VPC, SUBNET, f"{PREFIX}.20", "fa:16:3e:41:00:14", REMOTE_HOST),
        gs.router(
            "r-good",
            DVR_MAC,
            [SUBNET],
            [(SUBNET, "10.99.0.0/16", next_hop, 0), (SUBNET, "0.0.0.0/0", next_hop, 0)],
        ),
        # the poisons
        gs.port(pid, VPC, SUBNET, ip, mac, host.underlay_ip, pairs=[("fd00::5/128", "")]),
        gs.router("r-v6route", DVR_MAC, [SUBNET], [(SUBNET, "fd00:99::/64", next_hop, 0)]),
        _subnet("sn-v6", "fd00:41::/64", 4101, "fd00:41::1"),
        gs.router("r-v6subnet", DVR_MAC, ["sn-v6"]),
        _subnet("sn-mtu", "10.42.0.0/24", 4102, options={"mtu": "70000"}),
        gs.router("r-121", DVR_MAC, [SUBNET], [(SUBNET, f"10.{n}.0.0/16", next_hop, 0) for n in range(36)]),
        _subnet("sn-big", "10.43.0.0/24", 4103, options={f"option:{224 + n}": "x" * 200 for n in range(3)}),
        _dhcp_v6(mac),
        _context_subnet(),
        gs.port("port-ctx", VPC, "sn-ctx", "10.44.0.5", "fa:16:3e:44:00:05", host.underlay_ip),
    )


def _context_subnet() -> pb.SubnetState:
    state = _subnet("sn-ctx", "10.44.0.0/24", 4104, options={"no-such-option": "1"})
    state.operation_type = pb.INFO
    return state


def _dhcp_v6(mac: str) -> pb.DHCPState:
    state = gs.dhcp("dhcp-v6", SUBNET, mac, "")
    state.configuration.ipv6_address = "fd00:41::c"
    return state


def _good_cookies() -> dict[str, int]:
    return {
        "port-a": cookie(Kind.PORT, "port-a"),
        "port-b": cookie(Kind.PORT, "port-b"),
        "port-a DHCP steering": cookie(Kind.DHCP, "port:port-a"),
        "nb-good": cookie(Kind.NEIGHBOR, "nb-good"),
        "r-good": cookie(Kind.ROUTER, "r-good"),
    }


def _good_flows_in_ovs(sandbox: Sandbox) -> bool:
    flows = dump_cookies(sandbox, HOST)
    return all(flows[c] > 0 for c in _good_cookies().values())


def _lease(sandbox: Sandbox, vm: str) -> str | None:
    """The address busybox udhcpc is offered and acknowledged (its script changes nothing)."""
    out = sandbox.vm_exec(vm, ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1",
                               "-s", "/bin/true"])  # fmt: skip
    found = re.search(r"lease of (\S+) obtained", out.stdout + out.stderr)
    return found.group(1) if found else None


def _served(sandbox: Sandbox) -> None:
    """The good VMs reach each other and their gateway, and the DHCP client gets its lease."""
    assert sandbox.ping("pa", VMS["pb"][2]).returncode == 0
    assert sandbox.ping("pa", GATEWAY).returncode == 0
    assert _lease(sandbox, "pa") == VMS["pa"][2]


def test_poisons_are_refused_alone_and_survive_a_sigkill(sandbox: Sandbox) -> None:
    host = sandbox.host(HOST)
    (reply,) = sandbox.push_message(HOST, _goal_state(host))
    got = status_by_id(reply)
    assert {rid: got.get(rid) for rid in POISONS} == dict.fromkeys(POISONS, "INVALID_ARG")
    assert {got[rid] for rid in GOOD if not rid.startswith("port-")} == {"SUCCESS"}
    assert {got["port-a"], got["port-b"]} <= {"SUCCESS", "PENDING"}  # PENDING until OVSDB reports it
    log = pathlib.Path(host.log_file).read_text()
    for rid, reason in POISONS.items():
        rejected = [ln for ln in log.splitlines() if f"event=resource_rejected id={rid} " in ln]
        assert rejected and "status=INVALID_ARG" in rejected[-1] and reason in rejected[-1], (rid, rejected)
    context = [ln for ln in log.splitlines() if "event=context_rejected id=sn-ctx " in ln]
    assert context and CONTEXT_REASON in context[-1], context

    wait_for(lambda: _good_flows_in_ovs(sandbox), timeout=15, what="the good resources' flows in OVS")
    assert dump_cookies(sandbox, HOST)[cookie(Kind.PORT, POISON_VM[1])] == 0
    _served(sandbox)

    old_pid = host.agent_pid
    sandbox.stop_agent(HOST, signal.SIGKILL)
    log_size = pathlib.Path(host.log_file).stat().st_size
    restarted = sandbox.restart_agent(HOST)
    assert restarted.agent_pid not in (None, old_pid)
    wait_for(lambda: sandbox.control(HOST, "status")["dataplane_ready"], timeout=15, what="the resync")
    with open(host.log_file, errors="replace") as f:
        f.seek(log_size)
        since_start = f.read()
    assert "Traceback" not in since_start, since_start[-2000:]
    # The flows outlived the agent and the start-up resync found every one as it plans them.
    resync = re.findall(r"event=resync .*", since_start)
    assert resync and " added=0 deleted=0 " in resync[-1], resync
    assert _good_flows_in_ovs(sandbox), "read from OVS after the restart"
    assert dump_cookies(sandbox, HOST)[cookie(Kind.PORT, POISON_VM[1])] == 0
    _served(sandbox)
    assert sandbox.host(HOST).agent_pid == restarted.agent_pid
    os.kill(restarted.agent_pid, 0)  # still the same process: no exit, no restart loop
