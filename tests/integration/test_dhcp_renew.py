"""DHCP renew by unicast: real udhcpc and dhclient in VM namespaces on a sandbox host, goal states
over gRPC. A renewing client sends its DHCPREQUEST to the server id (the gateway IP) by unicast,
so it must resolve that address by ARP and get its ACK back there, in a subnet without a router
as in one with (where the router's answer for its gateway is the only one), and never fall back
to the broadcast of T2."""

from __future__ import annotations

import contextlib
import pathlib
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest

from agent.planner.cookies import Kind, cookie
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from tests.integration.test_dhcp import CONF, HOST, SCRIPT, Vm, Vpc
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import missing, require_ovs

pytestmark = pytest.mark.integration

require_ovs()
if shutil.which("busybox") is None:
    missing("busybox (udhcpc) is not installed")
if subprocess.run(["chrt", "-f", "1", "true"], capture_output=True).returncode != 0:
    missing("real-time scheduling (chrt -f) is not permitted")

LEASE = 8  # seconds: dhclient renews at T1 (4 s, randomised down to 3 s) and rebinds at T2 (7 s)
DVR_MAC = "fe:16:11:00:00:01"

# udhcpc runs this at its events: the address only (never /etc/resolv.conf, which the namespace
# shares with the machine).
UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
deconfig) ip addr flush dev "$interface" ;;
bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;;
esac
exit 0
"""


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with scratch_sandbox() as sb:
        sb.host_up(HOST)
        yield sb


class RenewVpc(Vpc):
    """A VPC whose subnet has a gateway MAC and short leases, with or without a router."""

    def __init__(
        self,
        sb: Sandbox,
        tmp: pathlib.Path,
        tag: str,
        vni: int,
        cidr: str,
        router: bool,
        routes: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(sb, tmp, tag, vni, cidr)
        self.router = router
        self.routes = routes  # the router's static routes in this subnet: (destination, next hop)
        self.gateway_mac = f"fa:16:3e:{vni % 256:02x}:ff:01"

    def context(self, op: int = gs.CREATE) -> list:
        vpc, subnet = super().context(op)
        subnet.configuration.gateway.mac_address = self.gateway_mac
        subnet.configuration.extra_dhcp_options.add(name="lease-time", value=str(LEASE))
        if not self.router:
            return [vpc, subnet]
        router_op = gs.DELETE if op == gs.DELETE else gs.CREATE
        routes = [(f"sn-{self.tag}", dest, hop, 1) for dest, hop in self.routes]
        router = gs.router(
            f"r-{self.tag}", DVR_MAC, [f"sn-{self.tag}"], routes, op=router_op, revision=self.revision
        )
        return [vpc, subnet, router]

    @property
    def owner_cookie(self) -> int:
        """The cookie of the one flow that should answer ARP for the gateway."""
        return (
            cookie(Kind.ROUTER, f"r-{self.tag}")
            if self.router
            else cookie(Kind.DHCP, f"subnet:sn-{self.tag}")
        )


@pytest.fixture
def vpcs(sandbox: Sandbox) -> Iterator[list[Vpc]]:
    made: list[Vpc] = []
    yield made
    for vpc in made:
        vpc.remove()


@contextlib.contextmanager
def running(sb: Sandbox, vm: Vm, cmd: list[str], log: pathlib.Path) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` in the VM's namespace (``ip netns exec`` execs it: its pid is the client's), its
    output in ``log``; stopped however the block ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", sb.vms()[vm.name].netns, *cmd], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def gateway_arp_flows(sb: Sandbox, gateway: str) -> list[str]:
    """The flows of table ARP_RESPONDER that answer for ``gateway``, as OVS holds them."""
    out = sb.exec(HOST, ["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "br-int", "table=20"]).stdout
    return [line for line in out.splitlines() if re.search(rf"arp_tpa={re.escape(gateway)}[, ]", line)]


def assert_gateway_answered(sb: Sandbox, vpc: RenewVpc) -> None:
    """One flow answers ARP for the gateway, its owner's, and it answered (the client's renew)."""
    (flow,) = gateway_arp_flows(sb, vpc.gateway)
    assert f"cookie={vpc.owner_cookie:#x}," in flow, flow
    assert "priority=100," in flow if vpc.router else "priority=95," in flow, flow
    packets = re.search(r"n_packets=(\d+),", flow)
    assert packets is not None and int(packets.group(1)) >= 1, flow


@pytest.mark.parametrize("router", [False, True], ids=["no_router", "router"])
def test_udhcpc_renews_by_unicast(
    sandbox: Sandbox, vpcs: list[Vpc], tmp_path: pathlib.Path, router: bool
) -> None:
    vni = 3201 + router
    vpc = RenewVpc(sandbox, tmp_path, f"u{int(router)}", vni, f"10.41.{int(router)}.0/24", router)
    vpcs.append(vpc)
    vm = vpc.vm(f"rnu{int(router)}", 10)
    vpc.push(vpc.port(vm), vpc.dhcp(vm))
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    log = tmp_path / "udhcpc.log"
    # -T 5: a unicast renew left unanswered falls back to "broadcasting renew" only after 5 s.
    # Real-time priority: udhcpc sends its renew from a socket bound to its address and connected
    # to the server, closed right after the write; an ACK that comes first lands there and is lost
    # (udhcpc then broadcasts). The responder here answers in ~0.3 ms, and on a loaded machine
    # the threads it wakes (ovs-vswitchd's, the responder's) can preempt a namespace's udhcpc
    # between its write and close; a VM's vCPU is not preempted by them in its own timeline.
    cmd = ["chrt", "-f", "1", "busybox", "udhcpc", "-f", "-i", "eth0", "-s", str(script), "-T", "5"]
    with running(sandbox, vm, cmd, log) as proc:
        obtained = f"lease of {vm.ip} obtained from {vpc.gateway}"
        wait_for(lambda: obtained in log.read_text(), 20, "udhcpc's first lease")
        wait_for(
            lambda: (
                f"{vm.ip}/24" in sandbox.vm_exec(vm.name, ["ip", "-4", "addr", "show", "dev", "eth0"]).stdout
            ),
            10,
            "the leased address on eth0",
        )
        mark = len(log.read_text())
        proc.send_signal(signal.SIGUSR1)  # renew now
        wait_for(lambda: obtained in log.read_text()[mark:], 20, "udhcpc's renewed lease")
        renew = log.read_text()[mark:]
    assert renew.index(f"sending renew to server {vpc.gateway}") < renew.index(obtained), renew
    assert "broadcasting renew" not in renew and "entering rebinding state" not in renew, renew
    assert_gateway_answered(sandbox, vpc)
    neigh = sandbox.vm_exec(vm.name, ["ip", "neigh", "show", vpc.gateway, "dev", "eth0"]).stdout
    assert f"lladdr {vpc.gateway_mac}" in neigh, neigh


def test_dhclient_renews_by_unicast_at_t1(sandbox: Sandbox, vpcs: list[Vpc], tmp_path: pathlib.Path) -> None:
    """dhclient keeps running with a lease of LEASE seconds: at T1 it sends its REQUEST to the
    server id by unicast, and the ACK makes it run its script with reason RENEW (REBIND would
    mean the unicast went unanswered and the broadcast of T2 got the lease)."""
    vpc = RenewVpc(sandbox, tmp_path, "d", 3203, "10.41.3.0/24", router=False)
    vpcs.append(vpc)
    vm = vpc.vm("rnd1", 10)
    vpc.push(vpc.port(vm), vpc.dhcp(vm))
    out = tmp_path / vm.name
    out.mkdir()
    script = out / "script.sh"
    script.write_text(SCRIPT.replace("{out}", str(out)))
    script.chmod(0o755)
    (out / "dhclient.conf").write_text(CONF.format(timeout=10))
    log = out / "dhclient.log"
    cmd = [
        "dhclient", "-4", "-d", "-v", "-sf", str(script), "-cf", str(out / "dhclient.conf"),
        "-lf", str(out / "leases"), "-pf", str(out / "dhclient.pid"), "eth0",
    ]  # fmt: skip
    with running(sandbox, vm, cmd, log):
        wait_for((out / "BOUND.env").exists, 20, "dhclient's first lease")
        wait_for(
            lambda: (out / "RENEW.env").exists() or (out / "REBIND.env").exists(),
            4 * LEASE,
            "dhclient's renewal",
        )
        text = log.read_text()
    assert (out / "RENEW.env").exists() and not (out / "REBIND.env").exists(), text
    renewed = dict(line.split("=", 1) for line in (out / "RENEW.env").read_text().splitlines() if "=" in line)
    assert renewed["new_ip_address"] == vm.ip and renewed["new_dhcp_server_identifier"] == vpc.gateway
    after_bound = text[text.index(f"bound to {vm.ip}") :]
    unicast = after_bound.index(f"DHCPREQUEST for {vm.ip} on eth0 to {vpc.gateway} port 67")
    assert after_bound.index(f"DHCPACK of {vm.ip} from {vpc.gateway}", unicast) > unicast, text
    assert "to 255.255.255.255 port 67" not in after_bound, text
    assert_gateway_answered(sandbox, vpc)


def test_udhcpc_receives_the_routers_routes_as_option_121(
    sandbox: Sandbox, vpcs: list[Vpc], tmp_path: pathlib.Path
) -> None:
    """The router's static route reaches a real client as option 121 (RFC 3442), with the
    default route through the gateway beside it (a client given 121 ignores option 3)."""
    vpc = RenewVpc(
        sandbox, tmp_path, "s", 3204, "10.41.4.0/24", router=True, routes=(("10.99.0.0/16", "10.41.4.20"),)
    )
    vpcs.append(vpc)
    vm = vpc.vm("rns1", 10)
    vpc.push(vpc.port(vm), vpc.dhcp(vm))
    got = tmp_path / "staticroutes"
    script = tmp_path / "udhcpc-routes.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$staticroutes" > {got}\nexit 0\n')
    script.chmod(0o755)
    cmd = ["busybox", "udhcpc", "-n", "-q", "-f", "-i", "eth0", "-O", "staticroutes", "-s", str(script)]
    done = sandbox.vm_exec(vm.name, cmd)
    assert done.returncode == 0, done.stdout + done.stderr
    routes = got.read_text().split()
    pairs = list(zip(routes[::2], routes[1::2], strict=True))
    assert ("10.99.0.0/16", "10.41.4.20") in pairs and ("0.0.0.0/0", vpc.gateway) in pairs, pairs
