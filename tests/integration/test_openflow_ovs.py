"""OpenFlow connection against a real, private ovs-vswitchd (netdev datapath, no kernel module)."""

from __future__ import annotations

import itertools
import os
import queue
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from agent.dataplane.openflow import codec
from agent.dataplane.openflow.connection import Message, OpenFlowConnection, OpenFlowError, State
from agent.planner.flows import (
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    Controller,
    DecTtl,
    Field,
    Flow,
    Move,
    Output,
    SetField,
    cidr_match,
    ip_to_int,
    mac_to_int,
    match,
)
from agent.sandbox.ovs import OvsInstance
from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration

OFPP_TABLE = 0xFFFFFFF9
IP, ARP, TCP, UDP, ICMP = 0x0800, 0x0806, 6, 17, 1

require_ovs()


def _add_bridge(ovs: OvsInstance, name: str) -> None:
    ovs.vsctl(
        "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev",
        "protocols=OpenFlow13,OpenFlow14,OpenFlow15", "fail_mode=secure",
    )  # fmt: skip


_netns_ids = itertools.count()


def _start_ovs(factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    """OVS in its own network namespace: the netdev datapath creates a tap named ``ovs-netdev``,
    so two instances in one namespace (parallel runs, the sandbox) would collide. The bridge's
    management socket is a filesystem path, reachable from the root namespace."""
    netns = f"aca-oftest-{os.getpid()}-{next(_netns_ids)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    instance = OvsInstance(factory.mktemp("ovs"), netns=netns)
    try:
        instance.start()
        yield instance
    finally:
        try:
            instance.stop()
        finally:
            subprocess.run(["ip", "netns", "delete", netns], check=False)


@pytest.fixture(scope="module")
def shared_ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    """One OVS for the module (stopping one takes seconds); each test gets its own bridge."""
    yield from _start_ovs(tmp_path_factory)


@pytest.fixture
def own_ovs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OvsInstance]:
    """A private OVS, for tests that restart ovs-vswitchd."""
    yield from _start_ovs(tmp_path_factory)


_bridge_ids = itertools.count()


@pytest.fixture
def bridge(shared_ovs: OvsInstance) -> Iterator[Bridge]:
    name = f"br{next(_bridge_ids)}"
    _add_bridge(shared_ovs, name)
    try:
        yield Bridge(shared_ovs, name)
    finally:
        shared_ovs.vsctl("--if-exists", "del-br", name)


@dataclass
class Bridge:
    ovs: OvsInstance
    name: str

    def ofctl_flows(self) -> list[str]:
        out = self.ovs.ofctl("dump-flows", "--no-stats", self.name)
        return sorted(line.strip() for line in out.splitlines() if line.strip() and "reply" not in line)


class Recorder:
    """Collects what the connection reports from its thread."""

    def __init__(self) -> None:
        self.states: list[State] = []
        self.messages: queue.Queue[Message] = queue.Queue()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def _connect(ovs: OvsInstance, bridge: str, recorder: Recorder) -> Iterator[OpenFlowConnection]:
    connection = OpenFlowConnection(
        str(ovs.mgmt_sock(bridge)), on_state_change=recorder.states.append, on_message=recorder.messages.put
    )
    try:
        connection.connect(timeout=10)
        yield connection
    finally:
        connection.close()


@pytest.fixture
def conn(bridge: Bridge, recorder: Recorder) -> Iterator[OpenFlowConnection]:
    yield from _connect(bridge.ovs, bridge.name, recorder)


@pytest.fixture
def own_conn(own_ovs: OvsInstance, recorder: Recorder) -> Iterator[OpenFlowConnection]:
    _add_bridge(own_ovs, "br-int")
    yield from _connect(own_ovs, "br-int", recorder)


def every_kind_of_flow() -> list[Flow]:
    """Every Field in a match, every action kind, masks, goto, cookies and timeouts."""
    return [
        Flow(
            0, 100,
            match(
                (Field.IN_PORT, 1), (Field.ETH_SRC, mac_to_int("02:00:00:00:00:01")),
                (Field.ETH_DST, mac_to_int("02:00:00:00:00:02")), (Field.ETH_TYPE, IP), (Field.IP_PROTO, TCP),
                cidr_match(Field.IPV4_SRC, "10.0.0.0/24"), cidr_match(Field.IPV4_DST, "10.0.1.5/32"),
                (Field.TCP_SRC, 1234), (Field.TCP_DST, 80), (Field.IP_TTL, 64), (Field.METADATA, 0x5, 0xFF),
            ),
            actions=(
                SetField(Field.ETH_DST, mac_to_int("02:00:00:00:00:09")),
                SetField(Field.IPV4_DST, ip_to_int("10.0.2.2")),
                DecTtl(), Move(Field.REG0, Field.REG1, 16, 0, 16), SetField(Field.METADATA, 7), Output(2),
            ),
            goto=10, cookie=0xA1, idle_timeout=300, hard_timeout=600,
        ),
        Flow(
            0, 90,
            match(
                (Field.ETH_TYPE, IP), (Field.IP_PROTO, UDP), (Field.UDP_SRC, 68), (Field.UDP_DST, 67),
                (Field.TUNNEL_ID, 0x1234), (Field.TUN_IPV4_SRC, ip_to_int("192.168.0.1")),
                (Field.TUN_IPV4_DST, ip_to_int("192.168.0.2")),
                *((getattr(Field, f"REG{i}"), i + 1) for i in range(4)),
                *((getattr(Field, f"REG{i}"), i << 8, 0xFF00) for i in range(4, 8)),
            ),
            actions=(
                Controller(userdata=b"\x01\x02"), Controller(max_len=128, userdata=b"dhcp"),
                Output(OFPP_CONTROLLER),
            ),
            cookie=0xA2,
        ),
        Flow(
            10, 80,
            match((Field.ETH_TYPE, IP), (Field.IP_PROTO, ICMP), (Field.ICMP_TYPE, 8), (Field.ICMP_CODE, 0)),
            actions=(Controller(max_len=64),),
            cookie=0xA3,
        ),
        Flow(
            10, 70,
            match(
                (Field.ETH_TYPE, ARP), (Field.ARP_OP, 1), (Field.ARP_SPA, ip_to_int("10.0.0.1")),
                cidr_match(Field.ARP_TPA, "10.0.0.0/16"), (Field.ARP_SHA, mac_to_int("02:00:00:00:00:01")),
                (Field.ARP_THA, 0),
            ),
            actions=(
                SetField(Field.ARP_OP, 2), SetField(Field.ARP_THA, mac_to_int("02:00:00:00:00:01")),
                SetField(Field.TUNNEL_ID, 5), SetField(Field.TUN_IPV4_DST, ip_to_int("192.168.0.9")),
                SetField(Field.REG7, 3), Output(OFPP_IN_PORT),
            ),
            cookie=0xA4,
        ),
        Flow(20, 0, match(), cookie=0xA5),  # drop-all, no instructions at all
        Flow(20, 1, match((Field.REG6, 1)), goto=30, cookie=0xA6),  # goto only
    ]  # fmt: skip


def test_bundle_installs_exactly_what_ovs_ofctl_installs(bridge: Bridge, conn: OpenFlowConnection) -> None:
    flows = every_kind_of_flow()
    conn.apply_bundle([], flows)

    # Same flows through ovs-ofctl from the planner's canonical text, onto a reference bridge.
    reference = Bridge(bridge.ovs, bridge.name + "ref")
    _add_bridge(reference.ovs, reference.name)
    try:
        text = "\n".join(f"cookie={f.cookie:#x}, {f.text()}" for f in flows)
        (bridge.ovs.rundir / "ref.flows").write_text(text + "\n")
        bridge.ovs.ofctl("add-flows", reference.name, str(bridge.ovs.rundir / "ref.flows"))
        ours, theirs = bridge.ofctl_flows(), reference.ofctl_flows()
    finally:
        reference.ovs.vsctl("del-br", reference.name)
    assert len(ours) == len(flows)
    assert ours == theirs

    dumped = {f.key: f for f in conn.dump_flows()}
    assert set(dumped) == {f.key for f in flows}
    for flow in flows:
        got = dumped[flow.key]
        assert got.instructions == codec.encode_instructions(flow), flow.text()
        assert (got.cookie, got.idle_timeout, got.hard_timeout) == (
            flow.cookie, flow.idle_timeout, flow.hard_timeout,
        )  # fmt: skip


def test_dump_filters_by_cookie(conn: OpenFlowConnection) -> None:
    conn.apply_bundle([], every_kind_of_flow())
    assert {f.cookie for f in conn.dump_flows(cookie=0xA2, cookie_mask=0xFF)} == {0xA2}


def test_deletes_then_adds_replace_in_one_commit(bridge: Bridge, conn: OpenFlowConnection) -> None:
    old = [Flow(0, 10, match((Field.REG0, i)), actions=(Output(1),)) for i in range(5)]
    conn.apply_bundle([], old)
    replaced = Flow(0, 10, match((Field.REG0, 0)), actions=(Output(2),))
    added = Flow(0, 10, match((Field.REG0, 9)), actions=(Output(3),))
    conn.apply_bundle(old[3:], [replaced, added])
    dumped = {f.key: f.instructions for f in conn.dump_flows()}
    assert set(dumped) == {f.key for f in [*old[:3], added]}
    assert dumped[replaced.key] == codec.encode_instructions(replaced)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (Flow(5, 1, match(), goto=2), "BAD_INSTRUCTION/BAD_TABLE_ID"),
        (Flow(0, 1, match(), actions=(SetField(Field.IPV4_DST, 1),)), "BAD_ACTION"),
        (Flow(0, 1, match((Field.TCP_DST, 80))), "BAD_MATCH/BAD_PREREQ"),
    ],
)
def test_rejected_flow_leaves_table_unchanged(
    bridge: Bridge, conn: OpenFlowConnection, bad: Flow, error: str
) -> None:
    before_flows = [Flow(0, 10, match((Field.REG0, i)), actions=(Output(1),)) for i in range(3)]
    conn.apply_bundle([], before_flows)
    before = bridge.ofctl_flows()
    good = Flow(0, 20, match((Field.REG1, 1)), actions=(Output(4),))
    with pytest.raises(OpenFlowError) as excinfo:
        conn.apply_bundle(before_flows[:1], [good, bad, *before_flows[1:]])
    assert excinfo.value.flow == bad
    assert error in str(excinfo.value)
    assert bridge.ofctl_flows() == before
    conn.barrier()  # the connection is still healthy


def test_commit_time_failure_rolls_back(bridge: Bridge, conn: OpenFlowConnection) -> None:
    """A table limit only trips when the commit inserts; OVS must undo the earlier inserts."""
    bridge.ovs.vsctl(
        "--", "--id=@ft", "create", "Flow_Table", "flow_limit=5", "overflow_policy=refuse",
        "--", "set", "bridge", bridge.name, "flow_tables:0=@ft",
    )  # fmt: skip
    conn.apply_bundle([], [Flow(0, 1, match((Field.REG0, 100)))])
    before = bridge.ofctl_flows()
    flows = [Flow(0, 1, match((Field.REG0, i)), actions=(Output(1),)) for i in range(8)]
    with pytest.raises(OpenFlowError) as excinfo:
        conn.apply_bundle([], flows)
    assert "TABLE_FULL" in str(excinfo.value)
    assert excinfo.value.flow in flows
    assert bridge.ofctl_flows() == before


def test_twenty_thousand_flows_in_one_bundle(conn: OpenFlowConnection) -> None:
    flows = [
        Flow(
            20, 100,
            match((Field.REG6, i % 500 + 1), (Field.ETH_TYPE, IP), (Field.IPV4_DST, 0x0A000000 + i)),
            actions=(SetField(Field.ETH_DST, 0x0200_0000_0000 + i), SetField(Field.REG5, i), Output(7)),
            goto=30, cookie=0x20,
        )
        for i in range(20_000)
    ]  # fmt: skip
    start = time.perf_counter()
    conn.apply_bundle([], flows)
    installed = time.perf_counter() - start
    start = time.perf_counter()
    dumped = conn.dump_flows()
    dump_time = time.perf_counter() - start
    start = time.perf_counter()
    conn.apply_bundle(flows, [])
    deleted = time.perf_counter() - start
    print(
        f"\n20000 flows: bundle install {installed:.3f} s, dump+decode {dump_time:.3f} s, "
        f"bundle delete {deleted:.3f} s"
    )
    assert {f.key for f in dumped} == {f.key for f in flows}
    assert conn.dump_flows() == []


def test_reconnects_after_vswitchd_restart(
    own_ovs: OvsInstance, own_conn: OpenFlowConnection, recorder: Recorder
) -> None:
    ovs, conn = own_ovs, own_conn
    assert recorder.states == [State.CONNECTING, State.HANDSHAKE, State.CONNECTED]
    first_dpid = conn.datapath_id
    ovs.stop_vswitchd()
    deadline = time.monotonic() + 10
    while conn.state is State.CONNECTED and time.monotonic() < deadline:
        time.sleep(0.01)
    assert conn.state is not State.CONNECTED
    with pytest.raises(ConnectionError):
        conn.barrier()
    ovs.vsctl("--no-wait", "set", "bridge", "br-int", "other-config:datapath-id=00000000000000ab")
    ovs.start_vswitchd()
    conn.wait_connected(timeout=15)
    assert conn.datapath_id == 0xAB != first_dpid
    assert recorder.states[3] is State.DISCONNECTED
    assert recorder.states[-1] is State.CONNECTED
    conn.apply_bundle([], [Flow(0, 1, match(), actions=(Output(1),))])
    assert len(conn.dump_flows()) == 1


def test_packet_out_through_tables_comes_back_as_packet_in(
    conn: OpenFlowConnection, recorder: Recorder
) -> None:
    flow = Flow(
        0, 10, match((Field.ETH_TYPE, IP)),
        actions=(SetField(Field.REG3, 0x77), Controller(userdata=b"why")), cookie=0x99,
    )  # fmt: skip
    conn.apply_bundle([], [flow])
    frame = bytes.fromhex("ffffffffffff 020000000001 0800") + bytes(20)
    conn.send_packet_out(OFPP_CONTROLLER, [Output(OFPP_TABLE)], frame)
    message = recorder.messages.get(timeout=5)
    assert codec.is_packet_in(message.raw)
    packet_in = codec.decode_packet_in(message.raw)
    assert packet_in.userdata == b"why"
    assert packet_in.cookie == 0x99
    assert packet_in.data == frame
    assert packet_in.match == match((Field.IN_PORT, OFPP_CONTROLLER), (Field.REG3, 0x77))


def test_route_fast_path_flows_are_accepted_and_dump_back_byte_equal(
    bridge: Bridge, conn: OpenFlowConnection
) -> None:
    """The re-entry flow (802.1Q VID match, pop_vlan) and the L3_ROUTING punt (moves into the
    addresses) as OVS 3.x takes them, compared with ovs-ofctl and with the dump."""
    from agent.planner import routing

    flows = [
        routing.reinject_flow(0x66, 5, 7),
        Flow(35, 0, match(), routing.punt_actions(7), cookie=0xA7),
        routing.cache_flow(
            routing.RouteTarget("r1", 0x1234, "10.1.2.20", "fa:16:3e:00:00:0b", "fe:16:11:00:00:01", 0x66,
                                "fe:16:11:00:00:01", "fa:16:3e:aa:00:02", False),
            0xA8, 10,
        ),
    ]  # fmt: skip
    _installs_as_ovs_ofctl_would(bridge, conn, flows, "route")


def test_delete_flows_by_cookie_mask(conn: OpenFlowConnection) -> None:
    keep = Flow(0, 10, match((Field.REG0, 1)), actions=(Output(1),), cookie=0xA000000000000001)
    gone = [
        Flow(0, 10, match((Field.REG0, i)), actions=(Output(1),), cookie=0xA080000000000002) for i in (2, 3)
    ]
    conn.apply_bundle([], [keep, *gone])
    conn.delete_flows(0xA080000000000002, 0xFFF00000000000FF)
    assert [f.key for f in conn.dump_flows()] == [keep.key]


def test_security_group_flows_are_accepted_and_dump_back_byte_equal(
    bridge: Bridge, conn: OpenFlowConnection
) -> None:
    """ct() (lookup with recirculation, commit), ct_state matches and conjunctions (a remote
    group's clauses and conj_id flow) as the planner builds them,
    compared with what ovs-ofctl installs from their text and with the dump (a restart must
    find them byte-equal, or it would rewrite them)."""
    from dataclasses import replace

    from agent.model.resources import FixedIp, Port, SecurityGroup, SecurityGroupRule
    from agent.planner import security

    port = Port("p1", 1, "fa:16:3e:00:00:05", fixed_ips=(FixedIp("s1", "10.0.1.5"),))
    group = SecurityGroup(
        "g1",
        1,
        rules=(
            SecurityGroupRule("r1", 1, 0, 0, 8000, 8099, remote_ip_prefix="10.0.0.0/8"),
            SecurityGroupRule("r2", 0, 0, 2, 8, 0),
            SecurityGroupRule("r3", 1, 0, 1, 53, 53, remote_group_id="g1"),
        ),
    )
    flows = (
        security.port_flows(port, 7, 0x66, [security.Gateway("10.0.1.1", "fa:16:3e:00:00:01")])
        + security.group_flows("p1", 7, 0x66, port.mac, group, {"g1": 41})
        + security.group_flows("p1", 7, 0x66, port.mac, replace(group, id="g2", stateless=True), {"g2": 42})
        + security.remote_flows("g1", 41, [0, 1], ["10.0.1.6/32", "10.0.2.0/24"])
        + security.base_flows(0xA9)
    )
    _installs_as_ovs_ofctl_would(bridge, conn, flows, "sg")


def _installs_as_ovs_ofctl_would(
    bridge: Bridge, conn: OpenFlowConnection, flows: list[Flow], name: str
) -> None:
    """``flows`` sent by the agent's codec equal the same flows added from their text by
    ovs-ofctl on a reference bridge, and dump back byte-equal (a restart must find them so, or
    it would rewrite them)."""
    conn.apply_bundle([], flows)
    reference = Bridge(bridge.ovs, bridge.name + "ref")
    _add_bridge(reference.ovs, reference.name)
    try:
        text = "\n".join(f"cookie={f.cookie:#x}, {f.text()}" for f in flows)
        (bridge.ovs.rundir / f"{name}.flows").write_text(text + "\n")
        bridge.ovs.ofctl("add-flows", reference.name, str(bridge.ovs.rundir / f"{name}.flows"))
        assert bridge.ofctl_flows() == reference.ofctl_flows()
    finally:
        reference.ovs.vsctl("del-br", reference.name)
    dumped = {f.key: f for f in conn.dump_flows()}
    assert set(dumped) == {f.key for f in flows}
    for flow in flows:
        assert dumped[flow.key].instructions == codec.encode_instructions(flow), flow.text()
        assert dumped[flow.key].idle_timeout == flow.idle_timeout
