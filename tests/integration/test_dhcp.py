"""Real DHCP clients against the agent's C responder: dhclient in VM namespaces on a sandbox
host, goal states over gRPC, counters over the control socket. One sandbox serves the module;
each test brings its own VPCs (VNIs), VMs and ids."""

from __future__ import annotations

import ipaddress
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.planner.dhcp import RESPONDER_MAC
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from tests.support.parts import missing, require_ovs

pytestmark = pytest.mark.integration

require_ovs()
if shutil.which("dhclient") is None:
    missing("dhclient (isc-dhcp-client) is not installed")

HOST = "host1"

# dhclient runs this instead of dhclient-script (with an environment of its own making, so the
# output directory is written in): it records what it was given and applies only the address and
# MTU (never /etc/resolv.conf, which the namespace shares with the machine).
SCRIPT = """#!/bin/sh
env | grep -E '^(reason|new_)' | sort > "{out}/$reason.env"
case "$reason" in
BOUND|RENEW|REBIND|REBOOT)
    ip addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
    [ -n "$new_interface_mtu" ] && ip link set "$interface" mtu "$new_interface_mtu"
    ;;
esac
exit 0
"""
CONF = """timeout {timeout};
retry 1;
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
request subnet-mask, broadcast-address, routers, domain-name, domain-name-servers, host-name,
        interface-mtu, rfc3442-classless-static-routes;
"""


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    root = tempfile.mkdtemp(prefix="acad-")
    sb = Sandbox(root, prefix=f"acad{uuid.uuid4().hex[:4]}-")
    try:
        sb.host_up(HOST)
        yield sb
    finally:
        sb.down()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Vm:
    name: str
    port_id: str
    mac: str
    ip: str


class Vpc:
    """One VPC with one subnet on the sandbox host; VMs are plugged with no address."""

    def __init__(self, sb: Sandbox, tmp: pathlib.Path, tag: str, vni: int, cidr: str, gw_last: int = 1):
        self.sb, self.tmp, self.tag, self.vni, self.cidr = sb, tmp, tag, vni, cidr
        net = ipaddress.ip_network(cidr)
        self.gateway = str(net.network_address + gw_last)
        self.dns = [str(net.network_address + 2), str(net.network_address + 3)]
        self.vms: dict[str, Vm] = {}
        self.revision = 1

    def context(self, op: int = gs.CREATE) -> list:
        return [
            gs.vpc(f"vpc-{self.tag}", self.vni, self.cidr, op=op, revision=self.revision),
            gs.subnet(
                f"sn-{self.tag}", f"vpc-{self.tag}", self.cidr, self.vni, gateway_ip=self.gateway,
                op=gs.DELETE if op == gs.DELETE else gs.INFO, revision=self.revision, dns=self.dns,
            ),
        ]  # fmt: skip

    def vm(self, name: str, last: int, mac: str | None = None) -> Vm:
        ip = str(ipaddress.ip_network(self.cidr).network_address + last)
        vm = Vm(
            name,
            f"port-{name}-{uuid.uuid4().hex[:6]}",
            mac or f"fa:16:3e:{self.vni % 256:02x}:00:{last:02x}",
            ip,
        )
        self.sb.vm_add(HOST, name, vm.mac, f"{ip}/32", iface_id=vm.port_id)
        self.sb.vm_exec(name, ["ip", "addr", "flush", "dev", "eth0"], check=True)
        self.vms[name] = vm
        return vm

    def port(self, vm: Vm, op: int = gs.CREATE) -> pb.PortState:
        host_ip = self.sb.host(HOST).underlay_ip
        return gs.port(
            vm.port_id, f"vpc-{self.tag}", f"sn-{self.tag}", vm.ip, vm.mac, host_ip, op, self.revision
        )

    def dhcp(self, vm: Vm, op: int = gs.CREATE) -> pb.DHCPState:
        return gs.dhcp(
            f"dhcp-{vm.port_id}", f"sn-{self.tag}", vm.mac, vm.ip, f"host-{vm.name}", op, self.revision
        )

    def push(self, *states: object, op: int = gs.CREATE) -> dict[str, int]:
        host_ip = self.sb.host(HOST).underlay_ip
        replies = self.sb.push_message(HOST, gs.goal_state_v2(*self.context(op), *states, host_ip=host_ip))
        statuses = {s.resource_id: s.operation_status for r in replies for s in r.operation_statuses}
        assert all(v == pb.SUCCESS for v in statuses.values()), statuses
        return statuses

    def dhclient(self, vm: Vm, *args: str, timeout: int = 10) -> dict[str, str] | None:
        """Run dhclient once in the VM; the BOUND/REBOOT values it got, or None without a lease."""
        out = self.tmp / vm.name
        out.mkdir(exist_ok=True)
        script = out / "script.sh"
        script.write_text(SCRIPT.replace("{out}", str(out)))
        script.chmod(0o755)
        (out / "dhclient.conf").write_text(CONF.format(timeout=timeout))
        for old in out.glob("*.env"):
            old.unlink()
        cmd = [
            "dhclient", "-4", "-1", "-v", "-sf", str(script),
            "-cf", str(out / "dhclient.conf"), "-lf", str(out / "leases"), "-pf", str(out / "pid"),
            *args, "eth0",
        ]  # fmt: skip
        proc = self.sb.vm_exec(vm.name, cmd)
        self.stop_dhclient(vm)
        if "-r" in args:
            return None
        for reason in ("BOUND", "REBOOT", "RENEW"):
            env = out / f"{reason}.env"
            if env.exists():
                return dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line)
        assert proc.returncode != 0, proc.stderr
        return None

    def stop_dhclient(self, vm: Vm) -> None:
        pid = self.tmp / vm.name / "pid"
        if pid.exists():
            self.sb.vm_exec(vm.name, ["kill", pid.read_text().strip()])
            pid.unlink()

    def remove(self) -> None:
        self.revision += 1
        try:
            for vm in self.vms.values():
                self.stop_dhclient(vm)
            states = [self.port(vm, gs.DELETE) for vm in self.vms.values()]
            states += [self.dhcp(vm, gs.DELETE) for vm in self.vms.values()]
            self.push(*states, op=gs.DELETE)
        finally:
            for name in self.vms:
                if name in self.sb.vms():
                    self.sb.vm_del(name)


@pytest.fixture
def vpcs(sandbox: Sandbox, tmp_path: pathlib.Path) -> Iterator[list[Vpc]]:
    made: list[Vpc] = []
    yield made
    for vpc in made:
        vpc.remove()


def counters(sb: Sandbox) -> dict[str, int]:
    return sb.control(HOST, "dhcp")["counters"]


def test_dhclient_gets_its_lease_and_reaches_a_neighbour(
    sandbox: Sandbox, vpcs: list[Vpc], tmp_path: pathlib.Path
) -> None:
    vpc = Vpc(sandbox, tmp_path, "a", 3101, "10.31.0.0/24")
    vpcs.append(vpc)
    client, neighbour = vpc.vm("dha1", 10), vpc.vm("dha2", 11)
    vpc.push(vpc.port(client), vpc.dhcp(client), vpc.port(neighbour))
    sandbox.vm_exec(neighbour.name, ["ip", "addr", "add", f"{neighbour.ip}/24", "dev", "eth0"], check=True)

    got = vpc.dhclient(client)
    assert got is not None, "no lease"
    assert got["new_ip_address"] == client.ip
    assert got["new_subnet_mask"] == "255.255.255.0"
    assert got["new_routers"] == vpc.gateway
    assert got["new_domain_name_servers"].split() == vpc.dns
    assert got["new_interface_mtu"] == "1450"
    assert got["new_host_name"] == f"host-{client.name}"
    assert got["new_broadcast_address"] == "10.31.0.255"
    assert got["new_dhcp_server_identifier"] == vpc.gateway
    addrs = sandbox.vm_exec(client.name, ["ip", "-4", "addr", "show", "dev", "eth0"]).stdout
    assert f"{client.ip}/24" in addrs and "mtu 1450" in addrs
    ping = sandbox.vm_exec(client.name, ["ping", "-c", "2", "-i", "0.3", "-W", "2", neighbour.ip])
    assert ping.returncode == 0, ping.stdout

    # renew (dhclient again with its lease file) keeps the address
    again = vpc.dhclient(client)
    assert again is not None and again["new_ip_address"] == client.ip
    # release frees nothing the goal state holds: the next client gets the same lease. RELEASE is
    # unicast to the server id (the gateway), which answers ARP with the responder's MAC.
    vpc.dhclient(client, "-r")
    neigh = sandbox.vm_exec(client.name, ["ip", "neigh", "show", vpc.gateway, "dev", "eth0"]).stdout
    assert f"lladdr {RESPONDER_MAC}" in neigh, neigh
    after = vpc.dhclient(client)
    assert after is not None and after["new_ip_address"] == client.ip
    c = counters(sandbox)
    assert c["rx_release"] >= 1 and c["tx_ack"] >= 3 and c["tx_offer"] >= 1 and c["tx_errors"] == 0
    # Every reply left straight out of the VM's device: the flows that would carry replies back
    # through OVS (CLASSIFY, tagged source from aca-dhcp) never matched a packet.
    table0 = sandbox.exec(HOST, ["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "br-int", "table=0"]).stdout
    back = [line for line in table0.splitlines() if "dl_src=0a:ca:" in line]
    assert back and all("n_packets=0," in line for line in back), back


def test_same_mac_in_two_vpcs_gets_each_vpcs_lease(
    sandbox: Sandbox, vpcs: list[Vpc], tmp_path: pathlib.Path
) -> None:
    mac = "fa:16:3e:77:77:77"
    one = Vpc(sandbox, tmp_path, "b", 3102, "10.32.0.0/24")
    two = Vpc(sandbox, tmp_path, "c", 3103, "10.32.0.0/24", gw_last=254)
    vpcs += [one, two]
    vm1, vm2 = one.vm("dhb1", 21, mac), two.vm("dhc1", 42, mac)
    one.push(one.port(vm1), one.dhcp(vm1))
    two.push(two.port(vm2), two.dhcp(vm2))
    got1, got2 = one.dhclient(vm1), two.dhclient(vm2)
    assert got1 is not None and got2 is not None
    assert (got1["new_ip_address"], got1["new_dhcp_server_identifier"]) == ("10.32.0.21", "10.32.0.1")
    assert (got2["new_ip_address"], got2["new_dhcp_server_identifier"]) == ("10.32.0.42", "10.32.0.254")
    assert got2["new_host_name"] == "host-dhc1"


def test_no_dhcp_state_no_answer_and_delete_stops_answers(
    sandbox: Sandbox, vpcs: list[Vpc], tmp_path: pathlib.Path
) -> None:
    vpc = Vpc(sandbox, tmp_path, "d", 3104, "10.34.0.0/24")
    vpcs.append(vpc)
    vm = vpc.vm("dhd1", 30)
    vpc.push(vpc.port(vm))
    before = counters(sandbox)["drop_no_lease"]
    assert vpc.dhclient(vm, timeout=3) is None
    assert counters(sandbox)["drop_no_lease"] > before
    vpc.push(vpc.dhcp(vm))
    assert vpc.dhclient(vm) is not None
    vpc.revision += 1
    vpc.push(vpc.dhcp(vm, gs.DELETE))
    sandbox.vm_exec(vm.name, ["ip", "addr", "flush", "dev", "eth0"], check=True)
    (tmp_path / vm.name / "leases").unlink(missing_ok=True)
    assert vpc.dhclient(vm, timeout=3) is None


CRAFT = textwrap.dedent(
    """
    import sys
    from scapy.all import BOOTP, DHCP, IP, UDP, Ether, mac2str, sendp
    mac = sys.argv[1]

    def base(options):
        return (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                / UDP(sport=68, dport=67) / BOOTP(chaddr=mac2str(mac), xid=7) / DHCP(options=options))

    good = bytes(base([("message-type", 1), "end"]))
    at = 14 + 20 + 8 + 240
    cookie = bytearray(good); cookie[at - 4:at] = bytes(4)
    size = bytearray(good); size[at + 1] = 2
    overlong = bytearray(good); overlong[at + 1] = 200
    # Cut inside the BOOTP message with consistent IP/UDP lengths (OVS itself does not parse UDP
    # ports of a frame shorter than its IP length says, so such frames never reach the responder).
    cut = (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
           / UDP(sport=68, dport=67) / good[at - 240:at - 100])
    frames = [bytes(cut), bytes(base([("message-type", 1)])), bytes(cookie), bytes(size), bytes(overlong)]
    for f in frames:
        sendp(Ether(f), iface="eth0", verbose=False)
    """
)


def test_malformed_requests_are_dropped_counted_and_valid_clients_still_served(
    sandbox: Sandbox, vpcs: list[Vpc], tmp_path: pathlib.Path
) -> None:
    vpc = Vpc(sandbox, tmp_path, "e", 3105, "10.35.0.0/24")
    vpcs.append(vpc)
    vm = vpc.vm("dhe1", 40)
    vpc.push(vpc.port(vm), vpc.dhcp(vm))
    before = counters(sandbox)
    proc = sandbox.vm_exec(vm.name, [sys.executable, "-c", CRAFT, vm.mac])
    assert proc.returncode == 0, proc.stderr
    expected = {"drop_truncated": 2, "drop_bad_cookie": 1, "drop_bad_option": 1, "drop_overlong": 1}
    deadline = time.monotonic() + 5
    while True:
        after = counters(sandbox)
        grew = {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}
        if all(grew.get(k, 0) >= n for k, n in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {k: grew.get(k, 0) for k in expected} == expected, after
    got = vpc.dhclient(vm)
    assert got is not None and got["new_ip_address"] == vm.ip


def test_responder_survives_an_ovs_vswitchd_restart(
    sandbox: Sandbox, vpcs: list[Vpc], tmp_path: pathlib.Path
) -> None:
    """ovs-vswitchd recreates the responder's device; the agent re-binds its C thread to it."""
    vpc = Vpc(sandbox, tmp_path, "r", 3109, "10.39.0.0/24")
    vpcs.append(vpc)
    client = vpc.vm("dhr1", 10)
    vpc.push(vpc.port(client), vpc.dhcp(client))
    assert vpc.dhclient(client) is not None
    sandbox.ovs(HOST).restart_vswitchd()
    deadline = time.monotonic() + 20
    while "event=openflow_reconnected" not in pathlib.Path(sandbox.host(HOST).log_file).read_text():
        assert time.monotonic() < deadline, "agent did not see ovs-vswitchd come back"
        time.sleep(0.1)
    wait_for(lambda: sandbox.control(HOST, "status")["dataplane_ready"], 20, "the replay after the restart")
    got = vpc.dhclient(client)
    assert got is not None and got["new_ip_address"] == client.ip, "no lease after the restart"


FLOOD = textwrap.dedent(
    """
    import socket, sys, time
    from scapy.all import BOOTP, DHCP, IP, UDP, Ether, mac2str
    mac, count = sys.argv[1], int(sys.argv[2])
    frame = bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                  / UDP(sport=68, dport=67) / BOOTP(chaddr=mac2str(mac), xid=9)
                  / DHCP(options=[("message-type", 1), "end"]))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind(("eth0", 0))
    start = time.monotonic()
    for i in range(count):  # ~2,000/s, paced so the veth's queue does not drop them first
        sock.send(frame)
        if i % 20 == 19:
            time.sleep(0.01)
    print(time.monotonic() - start)
    """
)


def test_rate_limit_holds_a_flooding_port_and_the_others_keep_getting_leases(
    sandbox: Sandbox, vpcs: list[Vpc], tmp_path: pathlib.Path
) -> None:
    """A VM sends DHCPDISCOVERs as fast as it can: the responder answers it within its per-port
    budget (shipped default: 100/s, burst 200) and drops the rest, counted, while another VM on
    the same host gets its lease during the flood."""
    vpc = Vpc(sandbox, tmp_path, "f", 3110, "10.40.0.0/24")
    vpcs.append(vpc)
    flooder, client = vpc.vm("dhf1", 10), vpc.vm("dhf2", 11)
    vpc.push(vpc.port(flooder), vpc.dhcp(flooder), vpc.port(client), vpc.dhcp(client))
    before = counters(sandbox)
    sent = 6_000
    netns = sandbox.vms()[flooder.name].netns
    flood = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", FLOOD, flooder.mac, str(sent)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        got = vpc.dhclient(client)  # while the flood runs
        out, err = flood.communicate(timeout=120)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    assert flood.returncode == 0, err
    assert got is not None and got["new_ip_address"] == client.ip, "no lease for the other port"
    seconds = float(out.strip())

    def grown(name: str) -> int:
        return counters(sandbox)[name] - before.get(name, 0)

    wait_for(lambda: grown("rx_discover") + grown("drop_rate_limited") >= sent // 2, 10, "the flood received")
    offers = grown("tx_offer")
    # The flooder's budget over the flood (plus the client's offer), with room for timing ...
    assert offers <= 200 + 100 * (seconds + 2) + 2, (offers, seconds)
    # ... and everything else it sent that arrived was dropped and counted as rate limited.
    assert grown("drop_rate_limited") >= sent // 2 - offers, counters(sandbox)
