"""Security groups on real OVS with real traffic: stateful allows per rule (TCP, UDP, ICMP,
ingress and egress, remote prefix and remote group), replies pass and unsolicited packets do
not, a removed rule stops its live connection, and a SIGKILLed agent comes back without
rewriting a flow or breaking an established connection.

One sandbox host serves the module; every test brings its own VNI, VMs, port and group ids.
"Denied" is only concluded after a later, allowed probe reached the same echo server."""

from __future__ import annotations

import ipaddress
import pathlib
import re
import shutil
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import missing, require_ovs
from tests.support.sg_traffic import Echo, Session, UdpSession, ping, probe
from tests.support.traffic import dump_flows

pytestmark = pytest.mark.integration

require_ovs()
if shutil.which("python3") is None:
    missing("python3 is not installed (the VMs' echo servers)")

HOST, OTHER = "sg1", "sg2"
INGRESS, EGRESS = gs.INGRESS, gs.EGRESS


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with scratch_sandbox() as sb:
        sb.host_up(HOST)
        sb.host_up(OTHER)
        yield sb


@dataclass
class Vm:
    name: str
    port_id: str
    mac: str
    ip: str
    groups: tuple[str, ...] = ()
    host: str = HOST


@dataclass
class Net:
    """One VPC/subnet on the host, its VMs and groups; everything removed afterwards."""

    sb: Sandbox
    tag: str
    vni: int
    cidr: str
    vms: dict[str, Vm] = field(default_factory=dict)
    groups: dict[str, list[Any]] = field(default_factory=dict)
    servers: list[Any] = field(default_factory=list)
    stateless: set[str] = field(default_factory=set)  # groups sent with the extension field set
    listed: dict[str, list[str]] = field(default_factory=dict)  # group → member addresses (ext. 101)
    revision: int = 1

    def vm(self, name: str, last: int, groups: tuple[str, ...] = (), host: str = HOST) -> Vm:
        ip = str(ipaddress.ip_network(self.cidr).network_address + last)
        mac = f"fa:16:3e:{self.vni >> 8 & 0xFF:02x}:{self.vni & 0xFF:02x}:{last:02x}"
        vm = Vm(f"{self.tag}{name}", f"port-{self.tag}{name}-{uuid.uuid4().hex[:6]}", mac, ip, groups, host)
        self.vms[name] = vm
        prefix = ipaddress.ip_network(self.cidr).prefixlen
        self.sb.vm_add(host, vm.name, vm.mac, f"{ip}/{prefix}", iface_id=vm.port_id)
        return vm

    def group_id(self, name: str) -> str:
        return f"sg-{self.tag}-{name}"

    def _context(self, op: int) -> list[Any]:
        return [
            gs.vpc(f"vpc-{self.tag}", self.vni, self.cidr, op=op, revision=self.revision),
            gs.subnet(
                f"subnet-{self.tag}",
                f"vpc-{self.tag}",
                self.cidr,
                self.vni,
                op=gs.DELETE if op == gs.DELETE else gs.INFO,
                revision=self.revision,
            ),
        ]

    def _port(self, vm: Vm, op: int) -> pb.PortState:
        host_ip = self.sb.host(vm.host).underlay_ip
        return gs.port(
            vm.port_id, f"vpc-{self.tag}", f"subnet-{self.tag}", vm.ip, vm.mac, host_ip, op,
            self.revision, groups=[self.group_id(g) for g in vm.groups],
        )  # fmt: skip

    def _neighbor(self, vm: Vm, op: int) -> pb.NeighborState:
        """A VM of another host as this host learns it, naming its groups (the extension field)."""
        host_ip = self.sb.host(vm.host).underlay_ip
        return gs.neighbor(
            vm.port_id, f"vpc-{self.tag}", f"subnet-{self.tag}", vm.ip, vm.mac, host_ip, op=op,
            revision=self.revision, groups=[self.group_id(g) for g in vm.groups],
        )  # fmt: skip

    def _states(self, host: str, op: int) -> list[Any]:
        """What ``host`` is told: every group, its own VMs as ports, the others as neighbours."""
        return [
            *(self._group(g, op) for g in self.groups),
            *(self._port(v, op) if v.host == host else self._neighbor(v, op) for v in self.vms.values()),
        ]

    def _hosts(self) -> list[str]:
        return sorted({v.host for v in self.vms.values()} | {HOST})

    def _group(self, name: str, op: int) -> pb.SecurityGroupState:
        stateless = name in self.stateless
        return gs.security_group(
            self.group_id(name),
            self.groups[name],
            op=op,
            revision=self.revision,
            stateless=stateless,
            member_ips=self.listed.get(name, ()),
        )

    def push(self, *states: Any, host: str = HOST, op: int = gs.CREATE) -> dict[str, int]:
        host_ip = self.sb.host(host).underlay_ip
        message = gs.goal_state_v2(*self._context(op), *states, host_ip=host_ip)
        replies = self.sb.push_message(host, message)
        return {s.resource_id: s.operation_status for r in replies for s in r.operation_statuses}

    def deploy(self) -> None:
        for host in self._hosts():
            statuses = self.push(*self._states(host, gs.CREATE), host=host)
            assert set(statuses.values()) == {pb.SUCCESS}, (host, statuses)

    def update_group(self, name: str, rules: list[Any]) -> int:
        self.groups[name] = rules
        self.revision += 1
        return self.push(self._group(name, gs.UPDATE))[self.group_id(name)]

    def update_port(self, name: str, groups: tuple[str, ...]) -> int:
        """The VM's groups change: its host gets the port, the other hosts the neighbour; the
        status of its own host."""
        vm = self.vms[name]
        vm.groups = groups
        self.revision += 1
        for host in self._hosts():
            if host != vm.host:
                assert self.push(self._neighbor(vm, gs.UPDATE), host=host)[vm.port_id] == pb.SUCCESS
        return self.push(self._port(vm, gs.UPDATE), host=vm.host)[vm.port_id]

    def echo(self, name: str, *ports: int) -> Echo:
        server = Echo(self.sb, self.vms[name].name, ports)
        self.servers.append(server)
        return server

    def remove(self) -> None:
        for server in self.servers:
            server.close()
        self.revision += 1
        try:
            for host in self._hosts():
                self.push(*self._states(host, gs.DELETE), host=host, op=gs.DELETE)
        finally:
            for vm in self.vms.values():
                if vm.name in self.sb.vms():
                    self.sb.vm_del(vm.name)


@pytest.fixture
def net(sandbox: Sandbox) -> Iterator[Any]:
    made: list[Net] = []

    def make(tag: str, vni: int, cidr: str) -> Net:
        made.append(Net(sandbox, tag, vni, cidr))
        return made[-1]

    yield make
    for n in made:
        n.remove()


def _denied(echo: Echo, attempt: Any, proof: Any, payload: str) -> None:
    """``attempt`` must fail and never reach ``echo``, proven by ``proof`` (an allowed probe
    sent after it) reaching the same server."""
    assert not attempt(), f"{payload} passed"
    assert proof(), "the proof probe did not pass"
    assert not echo.seen(payload), f"{payload} reached the server"


# ---------------------------------------------------------------------------- tests
def test_rules_allow_per_protocol_direction_and_prefix(sandbox: Sandbox, net: Any) -> None:
    n = net("sa", 4101, "10.41.0.0/24")
    n.groups["web"] = [
        gs.sg_rule("r-tcp", INGRESS, gs.TCP, (8080, 8080)),
        gs.sg_rule("r-udp", INGRESS, gs.UDP, (5353, 5353), remote_ip_prefix="10.41.0.11/32"),
        gs.sg_rule("r-icmp", INGRESS, gs.ICMP, remote_ip_prefix="10.41.0.11/32"),
        gs.sg_rule("r-out", EGRESS, gs.TCP, (9000, 9001)),
    ]
    srv = n.vm("srv", 10, ("web",))
    cli = n.vm("cli", 11)
    oth = n.vm("oth", 12)
    n.deploy()
    at_srv = n.echo("srv", 8080, 5353, 7000)
    at_cli = n.echo("cli", 9000, 9002)

    # Ingress TCP 8080 from anyone; the reply passes although srv has no egress rule for it.
    assert probe(sandbox, cli.name, "tcp", srv.ip, 8080, "tcp-8080-a")
    assert probe(sandbox, oth.name, "tcp", srv.ip, 8080, "tcp-8080-b")
    # TCP 7000 has no rule.
    _denied(
        at_srv,
        lambda: probe(sandbox, cli.name, "tcp", srv.ip, 7000, "tcp-7000", timeout=1),
        lambda: probe(sandbox, cli.name, "tcp", srv.ip, 8080, "after-7000"),
        "tcp-7000",
    )
    # UDP 5353 only from cli's /32.
    assert probe(sandbox, cli.name, "udp", srv.ip, 5353, "udp-cli")
    _denied(
        at_srv,
        lambda: probe(sandbox, oth.name, "udp", srv.ip, 5353, "udp-oth", timeout=1),
        lambda: probe(sandbox, cli.name, "udp", srv.ip, 5353, "udp-after-oth"),
        "udp-oth",
    )
    # ICMP only from cli (its echo reply leaves srv as a reply), not from oth; the ping after
    # oth's shows the path was up.
    assert ping(sandbox, cli.name, srv.ip)
    assert not ping(sandbox, oth.name, srv.ip, timeout=1)
    assert ping(sandbox, cli.name, srv.ip)
    # Egress: TCP 9000-9001 out of srv, not 9002, and no UDP out (unsolicited the other way).
    assert probe(sandbox, srv.name, "tcp", cli.ip, 9000, "out-9000")
    _denied(
        at_cli,
        lambda: probe(sandbox, srv.name, "tcp", cli.ip, 9002, "out-9002", timeout=1),
        lambda: probe(sandbox, srv.name, "tcp", cli.ip, 9000, "out-after-9002"),
        "out-9002",
    )
    _denied(
        at_cli,
        lambda: probe(sandbox, srv.name, "udp", cli.ip, 9000, "out-udp", timeout=1),
        lambda: probe(sandbox, srv.name, "tcp", cli.ip, 9000, "out-after-udp"),
        "out-udp",
    )
    # A port without groups is not filtered.
    assert probe(sandbox, oth.name, "tcp", cli.ip, 9002, "to-cli-9002")

    # acactl dump sg: per-rule packets from OVS, new connections and default drops per port
    # (OVS pulls datapath statistics in the background: wait until every probe is counted).
    def report() -> dict[str, Any]:
        return next(p for p in sandbox.control(HOST, "sg") if p["port"] == srv.port_id)

    def counted() -> bool:
        r = report()
        rules = {x["rule"]: x for x in r["rules"]}
        return (
            rules["r-tcp"]["packets"] >= 6  # 3 connections, >= 2 packets of the client each
            and rules["r-out"]["packets"] >= 6
            and rules["r-udp"]["packets"] == 2
            and (r["ingress_new"], r["egress_new"]) == (7, 3)  # connections, datagrams, echo requests
            and r["ingress_dropped"] >= 3
            and r["egress_dropped"] >= 2
        )

    wait_for(counted, 10, "the probes counted by acactl dump sg")
    rules = {x["rule"]: x for x in report()["rules"]}
    assert rules["r-udp"]["remote"] == "10.41.0.11/32" and rules["r-out"]["direction"] == "egress"
    assert rules["r-tcp"]["flows"] == 1 and rules["r-out"]["ports"] == "9000-9001"


def test_no_protocol_rule_allows_every_protocol(sandbox: Sandbox, net: Any) -> None:
    """Upstream's rule without a protocol (TCP, ports 0/0) reads as any protocol; TCP with a
    port range stays TCP."""
    n = net("sb", 4102, "10.42.0.0/24")
    n.groups["any"] = [gs.sg_rule("r-any", INGRESS, gs.TCP, remote_ip_prefix="10.42.0.11/32")]
    srv = n.vm("srv", 10, ("any",))
    cli = n.vm("cli", 11)
    oth = n.vm("oth", 12)
    n.deploy()
    at_srv = n.echo("srv", 7001)
    assert probe(sandbox, cli.name, "tcp", srv.ip, 7001, "any-tcp")
    assert probe(sandbox, cli.name, "udp", srv.ip, 7001, "any-udp")
    assert ping(sandbox, cli.name, srv.ip)
    _denied(
        at_srv,
        lambda: probe(sandbox, oth.name, "udp", srv.ip, 7001, "oth-udp", timeout=1),
        lambda: probe(sandbox, cli.name, "udp", srv.ip, 7001, "any-udp-2"),
        "oth-udp",
    )


def test_remote_group_follows_its_members(sandbox: Sandbox, net: Any) -> None:
    n = net("sc", 4103, "10.43.0.0/24")
    n.groups["db"] = [
        gs.sg_rule("r-db", INGRESS, gs.TCP, (5432, 5432), remote_group_id=n.group_id("app")),
        # The same port from one more address: a packet completing no conjunction still meets it.
        gs.sg_rule("r-db-pfx", INGRESS, gs.TCP, (5432, 5432), remote_ip_prefix="10.43.0.13/32"),
    ]
    n.groups["app"] = [gs.sg_rule("r-app-out", EGRESS, gs.TCP)]
    db = n.vm("db", 10, ("db",))
    app = n.vm("app", 11, ("app",))
    other = n.vm("oth", 12)
    pfx = n.vm("pfx", 13)
    n.deploy()
    at_db = n.echo("db", 5432)
    assert probe(sandbox, app.name, "tcp", db.ip, 5432, "from-app")
    assert probe(sandbox, pfx.name, "tcp", db.ip, 5432, "from-pfx")
    _denied(
        at_db,
        lambda: probe(sandbox, other.name, "tcp", db.ip, 5432, "from-oth", timeout=1),
        lambda: probe(sandbox, app.name, "tcp", db.ip, 5432, "from-app-2"),
        "from-oth",
    )
    # oth joins the app group: its address becomes a member of db's remote group.
    assert n.update_port("oth", ("app",)) == pb.SUCCESS
    assert probe(sandbox, other.name, "tcp", db.ip, 5432, "from-oth-member")
    # ... and leaves it again.
    assert n.update_port("oth", ()) == pb.SUCCESS
    _denied(
        at_db,
        lambda: probe(sandbox, other.name, "tcp", db.ip, 5432, "from-oth-left", timeout=1),
        lambda: probe(sandbox, app.name, "tcp", db.ip, 5432, "from-app-3"),
        "from-oth-left",
    )
    # The group lists oth's address as a member (extension field 101): allowed again.
    n.listed["app"] = [other.ip]
    assert n.update_group("app", n.groups["app"]) == pb.SUCCESS
    assert probe(sandbox, other.name, "tcp", db.ip, 5432, "from-oth-listed")


def test_remote_group_members_on_another_host(sandbox: Sandbox, net: Any) -> None:
    """Members behind the tunnel count when the controller names their groups on the neighbour
    (the extension field); a neighbour that names none is not a member."""
    n = net("sg", 4107, "10.47.0.0/24")
    n.groups["db"] = [gs.sg_rule("r-db", INGRESS, gs.TCP, (5432, 5432), remote_group_id=n.group_id("app"))]
    n.groups["app"] = [gs.sg_rule("r-app-out", EGRESS)]
    db = n.vm("db", 10, ("db",))
    app = n.vm("app", 11, ("app",), host=OTHER)
    other = n.vm("oth", 12, host=OTHER)
    n.deploy()
    at_db = n.echo("db", 5432)
    wait_for(lambda: probe(sandbox, app.name, "tcp", db.ip, 5432, "far-app"), 10, "app across the tunnel")
    _denied(
        at_db,
        lambda: probe(sandbox, other.name, "tcp", db.ip, 5432, "far-oth", timeout=1),
        lambda: probe(sandbox, app.name, "tcp", db.ip, 5432, "far-app-2"),
        "far-oth",
    )
    assert n.update_port("oth", ("app",)) == pb.SUCCESS
    assert probe(sandbox, other.name, "tcp", db.ip, 5432, "far-oth-member")


def test_removed_rule_stops_its_live_connection_and_spares_the_others(sandbox: Sandbox, net: Any) -> None:
    n = net("sd", 4104, "10.44.0.0/24")
    keep = gs.sg_rule("r-keep", INGRESS, gs.TCP, (8081, 8081))
    drop = gs.sg_rule("r-drop", INGRESS, gs.TCP, (8080, 8080))
    n.groups["g"] = [drop, keep]
    srv = n.vm("srv", 10, ("g",))
    cli = n.vm("cli", 11)
    n.deploy()
    n.echo("srv", 8080, 8081)
    doomed = Session(sandbox, cli.name, srv.ip, 8080)
    kept = Session(sandbox, cli.name, srv.ip, 8081)
    try:
        assert doomed.send("d-1") and kept.send("k-1")
        # acactl dump sg: conntrack holds each connection with the label of the rule that let it in.
        report = next(p for p in sandbox.control(HOST, "sg") if p["port"] == srv.port_id)
        assert {r["rule"]: r["connections"] for r in report["rules"]} == {"r-drop": 1, "r-keep": 1}
        flows_before = dump_flows(sandbox, HOST)
        assert n.update_group("g", [keep]) == pb.SUCCESS
        assert not doomed.send("d-2", timeout=1)  # the next packet of the connection is dropped
        assert kept.send("k-2")
        # Only the removed rule's flows changed.
        gone = set(flows_before) - set(dump_flows(sandbox, HOST))
        assert gone and all("tp_dst=8080" in f for f in gone), gone
        assert set(dump_flows(sandbox, HOST)) <= set(flows_before)
    finally:
        doomed.close()
        kept.close()


def test_removed_rule_blocks_the_replies_of_its_connections_too(sandbox: Sandbox, net: Any) -> None:
    """Once an established connection's next original packet meets no rule, the connection is
    marked blocked: the server's packets on it (the reply direction) are dropped as well."""
    n = net("sj", 4110, "10.50.0.0/24")
    n.groups["g"] = [
        gs.sg_rule("r-cli", INGRESS, gs.UDP, (7100, 7101), remote_ip_prefix="10.50.0.11/32"),
        gs.sg_rule("r-oth", INGRESS, gs.UDP, (7100, 7101), remote_ip_prefix="10.50.0.12/32"),
        gs.sg_rule("r-out", EGRESS, gs.UDP, remote_ip_prefix="10.50.0.11/32"),
    ]
    srv = n.vm("srv", 10, ("g",))
    cli = n.vm("cli", 11)
    oth = n.vm("oth", 12)
    n.deploy()
    at_srv = n.echo("srv", 7100, 7101)
    conn = UdpSession(sandbox, cli.name, 40000, srv.ip, 7100)
    try:
        conn.send("u-1")
        wait_for(lambda: conn.seen("u-1"), 5, "the echo of u-1")  # cli:40000 <-> srv:7100 tracked
        rules = n.groups["g"]
        assert n.update_group("g", [r for r in rules if r.id != "r-cli"]) == pb.SUCCESS
        conn.send("u-2")  # the connection's next original packet: no rule, marked blocked, dropped
        assert probe(sandbox, oth.name, "udp", srv.ip, 7100, "o-1")
        assert not at_srv.seen("u-2")
        # srv sends on the blocked connection (from 7100: its reply direction), then on a new
        # connection (from 7101, allowed out by r-out) that proves cli's socket still receives.
        assert probe(sandbox, oth.name, "udp", srv.ip, 7100, f"send:{cli.ip}:40000:late")
        assert probe(sandbox, oth.name, "udp", srv.ip, 7101, f"send:{cli.ip}:40000:proof")
        wait_for(lambda: conn.seen("proof"), 5, "srv's packet on a new connection")
        assert not conn.seen("late")
    finally:
        conn.close()


def test_toggling_one_rule_100_times_loses_nothing_of_another_rules_connection(
    sandbox: Sandbox, net: Any
) -> None:
    n = net("sh", 4108, "10.48.0.0/24")
    toggled = gs.sg_rule("r-a", INGRESS, gs.TCP, (8080, 8080))
    steady = gs.sg_rule("r-b", INGRESS, gs.TCP, (8081, 8081))
    n.groups["g"] = [toggled, steady]
    srv = n.vm("srv", 10, ("g",))
    cli = n.vm("cli", 11)
    n.deploy()
    n.echo("srv", 8080, 8081)
    session = Session(sandbox, cli.name, srv.ip, 8081)
    log = pathlib.Path(sandbox.host(HOST).log_file)
    try:
        assert session.send("b-start")
        logged = len(log.read_text().splitlines())
        for i in range(100):
            assert n.update_group("g", [steady] if i % 2 == 0 else [toggled, steady]) == pb.SUCCESS
            assert session.send(f"b-{i}"), i
        # Each goal state's bundle added or deleted the toggled rule's one flow, nothing else.
        changes = re.findall(
            r"event=goal_state .* flows_added=(\d+) flows_deleted=(\d+)",
            "\n".join(log.read_text().splitlines()[logged:]),
        )
        assert len(changes) == 100 and set(changes) == {("0", "1"), ("1", "0")}, changes
    finally:
        session.close()


def test_stateless_group_needs_rules_both_ways_and_never_enters_conntrack(sandbox: Sandbox, net: Any) -> None:
    n = net("si", 4109, "10.49.0.0/24")
    n.groups["sl"] = [gs.sg_rule("r-sl-in", INGRESS, gs.UDP, (7000, 7000), remote_ip_prefix="10.49.0.11/32")]
    n.stateless.add("sl")
    n.groups["sf"] = [gs.sg_rule("r-sf-in", INGRESS, gs.TCP, (8080, 8080))]
    srv = n.vm("srv", 10, ("sl", "sf"))
    cli = n.vm("cli", 11)
    n.deploy()
    at_srv = n.echo("srv", 7000, 8080)
    # In without conntrack, but the reply is nobody's: no rule lets it out.
    assert not probe(sandbox, cli.name, "udp", srv.ip, 7000, "sl-1", timeout=1)
    at_srv.wait_for("sl-1")
    rule_out = gs.sg_rule("r-sl-out", EGRESS, gs.UDP, remote_ip_prefix="10.49.0.11/32")
    assert n.update_group("sl", [*n.groups["sl"], rule_out]) == pb.SUCCESS
    assert probe(sandbox, cli.name, "udp", srv.ip, 7000, "sl-2")
    assert probe(sandbox, cli.name, "tcp", srv.ip, 8080, "sf-1")  # the stateful group beside it
    zone = next(p for p in sandbox.control(HOST, "sg") if p["port"] == srv.port_id)["zone"]
    vswitchd = f"{sandbox.host(HOST).ovs_rundir}/ovs-vswitchd.ctl"
    tracked = sandbox.exec(
        HOST, ["ovs-appctl", "-t", vswitchd, "dpctl/dump-conntrack", f"zone={zone}"]
    ).stdout
    assert "dport=8080" in tracked and "dport=7000" not in tracked, tracked


def test_sigkill_restart_rewrites_no_flow_and_keeps_connections(sandbox: Sandbox, net: Any) -> None:
    n = net("se", 4105, "10.45.0.0/24")
    n.groups["g"] = [gs.sg_rule("r-in", INGRESS, gs.TCP, (8080, 8080))]
    srv = n.vm("srv", 10, ("g",))
    cli = n.vm("cli", 11)
    n.deploy()
    n.echo("srv", 8080)
    session = Session(sandbox, cli.name, srv.ip, 8080)
    try:
        assert session.send("before")
        flows_before = dump_flows(sandbox, HOST)
        sandbox.restart_agent(HOST, signal.SIGKILL)
        log = pathlib.Path(sandbox.host(HOST).log_file).read_text()
        resync = re.findall(r"event=resync .*", log)[-1]
        assert " added=0 deleted=0 " in resync, resync
        assert dump_flows(sandbox, HOST) == flows_before
        assert session.send("after")
    finally:
        session.close()


def test_ipv6_rules_are_reported_and_ipv4_rules_still_enforced(sandbox: Sandbox, net: Any) -> None:
    n = net("sf", 4106, "10.46.0.0/24")
    n.groups["v6"] = [
        gs.sg_rule("r-v4", INGRESS, gs.TCP, (8080, 8080)),
        gs.sg_rule("r-v6", INGRESS, gs.TCP, (22, 22), ethertype=pb.IPV6),
    ]
    srv = n.vm("srv", 10, ("v6",))
    cli = n.vm("cli", 11)
    statuses = n.push(n._group("v6", gs.CREATE), n._port(srv, gs.CREATE), n._port(cli, gs.CREATE))
    assert statuses[n.group_id("v6")] == pb.INVALID_ARG
    assert statuses[srv.port_id] == statuses[cli.port_id] == pb.SUCCESS
    at_srv = n.echo("srv", 8080, 8082)
    assert probe(sandbox, cli.name, "tcp", srv.ip, 8080, "v4-allowed")
    _denied(
        at_srv,
        lambda: probe(sandbox, cli.name, "tcp", srv.ip, 8082, "no-rule", timeout=1),
        lambda: probe(sandbox, cli.name, "tcp", srv.ip, 8080, "v4-after"),
        "no-rule",
    )
