"""Real traffic across the overlay: two simulated hosts with agents, VMs as namespaces, pings
and packet captures. One sandbox serves the module; every test brings its own VPC (VNI), VM
names and port ids, and removes them again (goal-state DELETEs, then the VMs)."""

from __future__ import annotations

import ipaddress
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.planner.cookies import Kind, cookie
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from tests.support.parts import missing, require_ovs
from tests.support.traffic import (
    assert_flow_table_clean,
    assert_reaches,
    assert_unreachable,
    capture,
    dump_cookies,
    dump_flows,
    flush_neighbours,
    port_state,
    received,
)

pytestmark = pytest.mark.integration

require_ovs()
if shutil.which("tcpdump") is None:
    missing("tcpdump is not installed")

HOSTS = ("host1", "host2")


# ---------------------------------------------------------------------------- the sandbox
@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    root = tempfile.mkdtemp(prefix="acat-")  # short: unix socket paths live under it
    sb = Sandbox(root, prefix=f"acat{uuid.uuid4().hex[:4]}-")
    try:
        for host in HOSTS:
            sb.host_up(host)
        yield sb
    finally:
        sb.down()
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Vm:
    name: str
    host: str
    port_id: str
    mac: str
    ip: str


@dataclass
class Net:
    """One VPC with one subnet (its VNI) and the VMs of the test in it."""

    sandbox: Sandbox
    tag: str
    vni: int
    cidr: str
    vms: dict[str, Vm] = field(default_factory=dict)
    revision: int = 1

    @property
    def vpc_id(self) -> str:
        return f"vpc-{self.tag}"

    @property
    def subnet_id(self) -> str:
        return f"subnet-{self.tag}"

    def address(self, last: int) -> str:
        return str(ipaddress.ip_network(self.cidr).network_address + last)

    def vm(self, name: str, host: str, last: int, mac: str | None = None, port_id: str = "") -> Vm:
        """Declare a VM (not plugged yet); ``last`` is the host part of its address."""
        vm = Vm(
            name,
            host,
            port_id or f"port-{name}-{uuid.uuid4().hex[:8]}",
            mac or f"fa:16:3e:{self.vni >> 8 & 0xFF:02x}:{self.vni & 0xFF:02x}:{last:02x}",
            self.address(last),
        )
        self.vms[name] = vm
        return vm

    def plug(self, vm: Vm, nova_name: bool = False) -> None:
        prefix = ipaddress.ip_network(self.cidr).prefixlen
        self.sandbox.vm_add(
            vm.host, vm.name, vm.mac, f"{vm.ip}/{prefix}", iface_id=vm.port_id, nova_name=nova_name
        )

    def port_state(self, vm: Vm, op: int = gs.CREATE) -> pb.PortState:
        host_ip = self.sandbox.host(vm.host).underlay_ip
        return gs.port(vm.port_id, self.vpc_id, self.subnet_id, vm.ip, vm.mac, host_ip, op, self.revision)

    def neighbor_state(self, vm: Vm, op: int = gs.CREATE) -> pb.NeighborState:
        host_ip = self.sandbox.host(vm.host).underlay_ip
        return gs.neighbor(
            vm.port_id, self.vpc_id, self.subnet_id, vm.ip, vm.mac, host_ip, op=op, revision=self.revision
        )

    def push(self, host: str, *states: Any, op: int = gs.CREATE) -> dict[str, int]:
        """Send VPC, subnet and ``states`` to ``host``; the reply's status per resource id."""
        subnet_op = gs.DELETE if op == gs.DELETE else gs.INFO
        context = [
            gs.vpc(self.vpc_id, self.vni, self.cidr, op=op, revision=self.revision),
            gs.subnet(self.subnet_id, self.vpc_id, self.cidr, self.vni, op=subnet_op, revision=self.revision),
        ]
        host_ip = self.sandbox.host(host).underlay_ip
        replies = self.sandbox.push_message(host, gs.goal_state_v2(*context, *states, host_ip=host_ip))
        return {s.resource_id: s.operation_status for r in replies for s in r.operation_statuses}

    def states_for(self, host: str, op: int = gs.CREATE) -> list[Any]:
        """What the controller tells ``host``: its own VMs as ports, everyone else's as neighbours."""
        return [
            self.port_state(vm, op) if vm.host == host else self.neighbor_state(vm, op)
            for vm in self.vms.values()
        ]

    def deploy(self) -> None:
        for host in HOSTS:
            statuses = self.push(host, *self.states_for(host))
            assert all(s == pb.SUCCESS for s in statuses.values()), (host, statuses)

    def remove(self) -> None:
        """Everything of this net off both agents, then its VMs unplugged."""
        self.revision += 1
        try:
            for host in HOSTS:
                self.push(host, *self.states_for(host, gs.DELETE), op=gs.DELETE)
        finally:
            plugged = self.sandbox.vms()
            for name in self.vms:
                if name in plugged:
                    self.sandbox.vm_del(name)


@pytest.fixture
def nets(sandbox: Sandbox) -> Iterator[Callable[[str, int, str], Net]]:
    """Factory for per-test nets; each is removed after the test, passed or failed."""
    made: list[Net] = []

    def make(tag: str, vni: int, cidr: str) -> Net:
        net = Net(sandbox, tag, vni, cidr)
        made.append(net)
        return net

    yield make
    errors = []
    for net in made:
        try:
            net.remove()
        except Exception as exc:  # still remove the others; report the first failure
            errors.append(exc)
    if errors:
        raise errors[0]


# ---------------------------------------------------------------------------- tests
def test_vms_reach_each_other_across_hosts_and_on_one_host(sandbox: Sandbox, nets: Any) -> None:
    net = nets("t1", 3001, "10.31.0.0/24")
    a, b = net.vm("t1a", "host1", 11), net.vm("t1b", "host1", 12)
    c = net.vm("t1c", "host2", 13)
    for vm in (a, b, c):
        net.plug(vm)
    net.deploy()
    assert_reaches(sandbox, "t1a", b.ip)  # same host
    assert_reaches(sandbox, "t1a", c.ip)  # across VXLAN
    assert_reaches(sandbox, "t1c", b.ip)
    assert_reaches(sandbox, "t1b", a.ip)


def test_neighbour_delete_makes_the_peer_unreachable(sandbox: Sandbox, nets: Any) -> None:
    net = nets("t2", 3002, "10.32.0.0/24")
    a, b = net.vm("t2a", "host1", 11), net.vm("t2b", "host2", 12)
    for vm in (a, b):
        net.plug(vm)
    net.deploy()
    assert_reaches(sandbox, "t2a", b.ip)
    owned = cookie(Kind.NEIGHBOR, b.port_id)
    assert dump_cookies(sandbox, "host1")[owned] > 0

    net.revision += 1
    statuses = net.push("host1", net.neighbor_state(b, gs.DELETE))
    assert statuses[b.port_id] == pb.SUCCESS, statuses
    assert dump_cookies(sandbox, "host1")[owned] == 0
    assert_unreachable(sandbox, "t2a", b.ip)  # the cached ARP entry no longer helps
    flush_neighbours(sandbox, "t2a")
    assert_unreachable(sandbox, "t2a", b.ip)  # nor is the address answered or flooded to any more

    net.revision += 1
    net.push("host1", net.neighbor_state(b))
    assert_reaches(sandbox, "t2a", b.ip)


def test_port_delete_leaves_no_flows(sandbox: Sandbox, nets: Any) -> None:
    net = nets("t3", 3003, "10.33.0.0/24")
    a, b = net.vm("t3a", "host1", 11), net.vm("t3b", "host1", 12)
    for vm in (a, b):
        net.plug(vm)
    net.deploy()
    assert_reaches(sandbox, "t3a", b.ip)
    before = dump_cookies(sandbox, "host1")
    owned = cookie(Kind.PORT, a.port_id)
    assert before[owned] > 0
    ofport_a = next(p["ofport"] for p in sandbox.control("host1", "ports") if p["id"] == a.port_id)

    net.revision += 1
    statuses = net.push("host1", net.port_state(a, gs.DELETE))
    assert statuses[a.port_id] == pb.SUCCESS, statuses
    after = dump_cookies(sandbox, "host1")
    assert after[owned] == 0
    # Only the port's own flows (and its DHCP steering) went; the flood list no longer outputs to it.
    gone = {owned, cookie(Kind.DHCP, f"port:{a.port_id}")}
    assert {c: n for c, n in before.items() if c not in gone} == dict(after)
    segment = f"cookie={cookie(Kind.SEGMENT, str(net.vni)):#x},"
    segment_flows = [f for f in dump_flows(sandbox, "host1") if f.startswith(segment)]
    assert segment_flows and all(f"output:{ofport_a}," not in f + "," for f in segment_flows)
    assert a.port_id not in {p["id"] for p in sandbox.control("host1", "ports")}
    assert_unreachable(sandbox, "t3a", b.ip)
    assert_flow_table_clean(sandbox, "host1")


def test_two_vpcs_with_the_same_addresses_stay_apart(sandbox: Sandbox, nets: Any) -> None:
    cidr = "10.34.0.0/24"
    vpc_a, vpc_b = nets("t4a", 3004, cidr), nets("t4b", 3005, cidr)
    # Same IPs and the same MACs in both VPCs, on the same two hosts.
    a1, a2 = (
        vpc_a.vm("t4a1", "host1", 11, "fa:16:3e:44:00:11"),
        vpc_a.vm("t4a2", "host2", 12, "fa:16:3e:44:00:12"),
    )
    b1, b2 = vpc_b.vm("t4b1", "host1", 11, a1.mac), vpc_b.vm("t4b2", "host2", 12, a2.mac)
    for net, vms in ((vpc_a, (a1, a2)), (vpc_b, (b1, b2))):
        for vm in vms:
            net.plug(vm)
        net.deploy()
    assert_reaches(sandbox, "t4b1", b2.ip)
    assert_reaches(sandbox, "t4b2", b1.ip)
    flush_neighbours(sandbox, "t4a1", "t4a2")

    b2_ns, a2_ns = sandbox.vms()["t4b2"].netns, sandbox.vms()["t4a2"].netns
    # Inbound only: B's own VMs stay quiet meanwhile, so anything arriving would be VPC A's.
    with (
        capture(b2_ns, "eth0", "icmp or arp", ("-Q", "in")) as in_b2,
        capture(a2_ns, "eth0", "icmp", ("-Q", "in")) as in_a2,
    ):
        assert_reaches(sandbox, "t4a1", a2.ip)
        assert_reaches(sandbox, "t4a2", a1.ip)
        # ARP for an address nobody in A has is flooded through A's segment, never into B's.
        assert_unreachable(sandbox, "t4a1", vpc_a.address(99))
    assert in_b2 == []
    assert any(f"{a1.ip} > {a2.ip}: ICMP echo request" in p for p in in_a2), in_a2
    # B still works afterwards, and was answered by its own peer.
    assert_reaches(sandbox, "t4b1", b2.ip)


def test_spoofed_mac_or_ip_reaches_nobody_and_arp_stays_local(sandbox: Sandbox, nets: Any) -> None:
    net = nets("t5", 3006, "10.35.0.0/24")
    x, z = net.vm("t5x", "host1", 11), net.vm("t5z", "host1", 13)
    y = net.vm("t5y", "host2", 12)
    for vm in (x, y, z):
        net.plug(vm)
    net.deploy()
    assert_reaches(sandbox, "t5x", y.ip)
    assert_reaches(sandbox, "t5x", z.ip)

    def spoofed(setup: list[list[str]], undo: list[list[str]]) -> None:
        for cmd in setup:
            sandbox.vm_exec("t5x", cmd, check=True)
        try:
            flush_neighbours(sandbox, "t5x")
            for peer in (y, z):  # ARP from the spoofed source is dropped ...
                assert_unreachable(sandbox, "t5x", peer.ip)
            for peer in (y, z):  # ... and so is IP, even when the peer's MAC is already known
                sandbox.vm_exec(
                    "t5x", ["ip", "neigh", "replace", peer.ip, "lladdr", peer.mac, "dev", "eth0"], check=True
                )
                assert_unreachable(sandbox, "t5x", peer.ip)
        finally:
            for cmd in undo:
                sandbox.vm_exec("t5x", cmd, check=True)
            flush_neighbours(sandbox, "t5x")

    spoofed(
        [["ip", "link", "set", "eth0", "address", "fa:16:3e:55:55:55"]],
        [["ip", "link", "set", "eth0", "address", x.mac]],
    )
    assert_reaches(sandbox, "t5x", y.ip)
    spoofed(
        [
            ["ip", "addr", "del", f"{x.ip}/24", "dev", "eth0"],
            ["ip", "addr", "add", f"{net.address(99)}/24", "dev", "eth0"],
        ],
        [
            ["ip", "addr", "del", f"{net.address(99)}/24", "dev", "eth0"],
            ["ip", "addr", "add", f"{x.ip}/24", "dev", "eth0"],
        ],
    )
    assert_reaches(sandbox, "t5x", y.ip)

    # ARP for a known address is answered on the host: on the underlay only VXLAN carries the
    # ICMP, and no ARP for a VM address is ever encapsulated (nor sent bare).
    flush_neighbours(sandbox, "t5x", "t5y")
    with capture(sandbox.underlay_netns, "ul0", "") as underlay:
        assert_reaches(sandbox, "t5x", y.ip)
    vxlan = [p for p in underlay if ".4789: VXLAN" in p]
    assert any(f"{x.ip} > {y.ip}: ICMP echo request" in p for p in vxlan), underlay
    vm_addresses = ipaddress.ip_network(net.cidr)
    arp_for_vms = [
        p
        for p in underlay
        if "ARP" in p
        and any(ipaddress.ip_address(a) in vm_addresses for a in re.findall(r"\d+\.\d+\.\d+\.\d+", p))
    ]
    assert arp_for_vms == []
    neigh = sandbox.vm_exec("t5x", ["ip", "neigh", "show", y.ip], check=True).stdout
    assert y.mac in neigh, neigh


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_agent_restart_under_traffic_loses_nothing(sandbox: Sandbox, nets: Any, sig: signal.Signals) -> None:
    net = nets(f"t6{sig.name.lower()}", 3007 + (sig == signal.SIGKILL), "10.36.0.0/24")
    tag = "k" if sig == signal.SIGKILL else "t"
    a, b = net.vm(f"t6{tag}a", "host1", 11), net.vm(f"t6{tag}b", "host2", 12)
    for vm in (a, b):
        net.plug(vm)
    net.deploy()
    assert_reaches(sandbox, a.name, b.ip)
    flows_before = {host: dump_flows(sandbox, host) for host in HOSTS}

    # 8 s of pings, 10 a second; the agent goes down once they flow: not one may be lost.
    cmd = [
        "ip",
        "netns",
        "exec",
        sandbox.vms()[a.name].netns,
        "ping",
        "-i",
        "0.1",
        "-c",
        "80",
        "-W",
        "1",
        b.ip,
    ]
    ping = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert ping.stdout is not None
        head = [ping.stdout.readline() for _ in range(3)]  # the banner, then two replies: flowing
        sandbox.restart_agent("host2", sig)
        out, _ = ping.communicate(timeout=30)
        out = "".join(head) + out
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    sent, got = received(out)
    assert sent == 80 and got == sent, out
    for host in HOSTS:
        assert dump_flows(sandbox, host) == flows_before[host], host
        assert_flow_table_clean(sandbox, host)
    # The restarted agent rewrote nothing: its start-up resync found every flow in place.
    log = pathlib.Path(sandbox.host("host2").log_file).read_text()
    resync = re.findall(r"event=resync .*", log)[-1]
    assert " added=0 deleted=0 " in resync, resync
    # It still takes goal states.
    assert_reaches(sandbox, b.name, a.ip)


def test_port_pending_until_the_vm_is_plugged(sandbox: Sandbox, nets: Any) -> None:
    net = nets("t7", 3009, "10.37.0.0/24")
    a, b = net.vm("t7a", "host1", 11), net.vm("t7b", "host2", 12)
    net.plug(b)
    assert set(net.push("host2", *net.states_for("host2")).values()) == {pb.SUCCESS}
    statuses = net.push("host1", *net.states_for("host1"))
    assert statuses[a.port_id] == pb.PENDING, statuses
    assert port_state(sandbox, "host1", a.port_id) == "pending"
    assert port_state(sandbox, "host2", b.port_id) == "programmed"
    assert dump_cookies(sandbox, "host1")[cookie(Kind.PORT, a.port_id)] == 0

    net.plug(a)  # no further goal state: the agent binds it from OVSDB
    wait_for(lambda: port_state(sandbox, "host1", a.port_id) == "programmed", what="port bound")
    assert dump_cookies(sandbox, "host1")[cookie(Kind.PORT, a.port_id)] > 0
    assert_reaches(sandbox, "t7a", b.ip)
    assert_reaches(sandbox, "t7b", a.ip)


def test_nova_named_tap_without_iface_id_binds(sandbox: Sandbox, nets: Any) -> None:
    net = nets("t8", 3010, "10.38.0.0/24")
    a = net.vm("t8a", "host1", 11, port_id=str(uuid.uuid4()))
    b = net.vm("t8b", "host2", 12)
    net.plug(a, nova_name=True)
    net.plug(b)
    tap = sandbox.vms()["t8a"].port
    assert tap == f"tap{a.port_id[:11]}"
    # Only the name identifies it: drop the iface-id before the agent learns of the port.
    sandbox.exec("host1", ["ovs-vsctl", "remove", "Interface", tap, "external_ids", "iface-id"])
    ids = sandbox.exec("host1", ["ovs-vsctl", "get", "Interface", tap, "external_ids"]).stdout
    assert "iface-id" not in ids, ids
    net.deploy()
    wait_for(lambda: port_state(sandbox, "host1", a.port_id) == "programmed", what="tap port bound")
    assert_reaches(sandbox, "t8a", b.ip)
    assert_reaches(sandbox, "t8b", a.ip)
