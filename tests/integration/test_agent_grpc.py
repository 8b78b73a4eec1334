"""aca-agent as a process: goal states over its real gRPC socket, replies, held state, restart.

One sandbox host runs the agent for the whole module; every test uses resource ids of its own,
so the tests do not depend on each other's order.
"""

from __future__ import annotations

import ipaddress
import pathlib
import re
import signal
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc
from agent.sandbox import goalstates as g
from agent.sandbox.hosts import HostInfo, Sandbox
from agent.sandbox.ovs import process_gone
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox, status_by_id, statuses
from tests.support.parts import require_ovs
from tests.support.traffic import dump_flows

pytestmark = pytest.mark.integration

require_ovs()

HOST = "host1"
VPC, VNI = "vpc-1", 100
SUBNET, CIDR = "sn-1", "10.0.0.0/24"
REMOTE_HOST = "172.31.0.99"  # another compute host's tunnel endpoint (never contacted)
SERVICE = "/alcor.schema.GoalStateProvisioner"
V1_PATH = f"{SERVICE}/PushNetworkResourceStates"
V2_PATH = f"{SERVICE}/PushGoalStatesStream"
TIMEOUT = 30.0
BIG = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    # The client's own receive limit is 4 MB by default; raise both directions.
    ("grpc.max_send_message_length", BIG),
    ("grpc.max_receive_message_length", BIG),
    # Reconnect quickly after the agent restarts.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with scratch_sandbox() as sb:
        sb.host_up(HOST)
        yield sb


@pytest.fixture(scope="module")
def host(sandbox: Sandbox) -> HostInfo:
    return sandbox.host(HOST)


@pytest.fixture(scope="module")
def channel(sandbox: Sandbox) -> Iterator[grpc.Channel]:
    with sandbox.channel(HOST, options=CHANNEL_OPTIONS) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GoalStateProvisionerStub:
    return pb_grpc.GoalStateProvisionerStub(channel)


def push_v1(stub: pb_grpc.GoalStateProvisionerStub, msg: pb.GoalState) -> pb.GoalStateOperationReply:
    return stub.PushNetworkResourceStates(msg, timeout=TIMEOUT, wait_for_ready=True)


def push_v2(
    stub: pb_grpc.GoalStateProvisionerStub, *msgs: pb.GoalStateV2
) -> list[pb.GoalStateOperationReply]:
    return list(stub.PushGoalStatesStream(iter(msgs), timeout=TIMEOUT, wait_for_ready=True))


def context_subnet(subnet_id: str = SUBNET, cidr: str = CIDR, vni: int = VNI) -> pb.SubnetState:
    """The subnet as the controller sends it alongside ports and neighbours: INFO, no status."""
    gateway = str(ipaddress.ip_network(cidr).network_address + 1)
    return g.subnet(subnet_id, VPC, cidr, vni, gateway_ip=gateway)


def neighbour(nid: str, last_octet: int, revision: int = 1, mac: str | None = None) -> pb.NeighborState:
    mac = mac or f"02:00:00:00:00:{last_octet:02x}"
    return g.neighbor(nid, VPC, SUBNET, f"10.0.0.{last_octet}", mac, REMOTE_HOST, revision=revision)


def snapshot(sandbox: Sandbox) -> dict[str, Any]:
    """What the agent holds, and what the switch holds (read from OVS, not the agent's mirror)."""
    held = {what: sandbox.control(HOST, what) for what in ("ports", "neighbours")}
    return {**held, "switch": dump_flows(sandbox, HOST)}


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


# ---------------------------------------------------------------- 1. v1 unary
def test_v1_unary_push(sandbox: Sandbox, host: HostInfo, stub: pb_grpc.GoalStateProvisionerStub) -> None:
    msg = g.goal_state_v1(
        g.vpc(VPC, VNI),
        context_subnet(),
        g.port("port-v1", VPC, SUBNET, "10.0.0.11", "02:00:00:00:01:11", host_ip=host.underlay_ip),
        neighbour("nb-v1", 12),
    )
    reply = push_v1(stub, msg)
    # The subnet is INFO (context): no status. The port's interface is not on br-int: PENDING.
    assert statuses(reply) == [
        (VPC, "VPC", "CREATE", "SUCCESS"),
        ("port-v1", "PORT", "CREATE", "PENDING"),
        ("nb-v1", "NEIGHBOR", "CREATE", "SUCCESS"),
    ]
    assert reply.format_version == 1
    assert reply.message_total_operation_time > 0
    assert all(s.state_elapse_time > 0 for s in reply.operation_statuses)
    port = by_id(sandbox.control(HOST, "ports"))["port-v1"]
    assert (port["state"], port["ofport"], port["segment"]) == ("pending", None, VNI)
    nb = by_id(sandbox.control(HOST, "neighbours"))["nb-v1"]
    assert (nb["state"], nb["host_ip"], nb["segments"]) == ("programmed", REMOTE_HOST, [VNI])
    assert nb["flows"] > 0


# ---------------------------------------------------------------- 2. v2 stream, N in → N out
def test_v2_stream_of_five_gets_five_replies_in_order(
    host: HostInfo, stub: pb_grpc.GoalStateProvisionerStub
) -> None:
    ids = [f"nb-stream-{i}" for i in range(5)]
    msgs = [
        g.goal_state_v2(context_subnet(), neighbour(nid, 20 + i), host_ip=host.underlay_ip)
        for i, nid in enumerate(ids)
    ]
    replies = push_v2(stub, *msgs)
    assert len(replies) == 5
    assert [statuses(r) for r in replies] == [[(nid, "NEIGHBOR", "CREATE", "SUCCESS")] for nid in ids]


# ---------------------------------------------------------------- 3. empty goal states
def test_empty_goal_states_are_answered(stub: pb_grpc.GoalStateProvisionerStub) -> None:
    replies = push_v2(stub, pb.GoalStateV2())
    assert len(replies) == 1
    assert replies[0].format_version == 1
    assert list(replies[0].operation_statuses) == []
    reply = push_v1(stub, pb.GoalState())
    assert list(reply.operation_statuses) == []
    assert push_v2(stub) == []  # a stream closed without a message: nothing to answer


# ---------------------------------------------------------------- 4. beyond gRPC's 4 MB default
def test_ten_mib_goal_state(sandbox: Sandbox, host: HostInfo, stub: pb_grpc.GoalStateProvisionerStub) -> None:
    count = 2000
    msg = g.goal_state_v2(context_subnet("sn-big", "10.8.0.0/16", 108), host_ip=host.underlay_ip)
    for i in range(count):
        state = g.neighbor(
            f"nb-big-{i}", VPC, "sn-big", f"10.8.{i // 250}.{i % 250 + 2}",
            f"02:00:08:00:{i >> 8:02x}:{i & 0xFF:02x}", REMOTE_HOST,
        )  # fmt: skip
        state.configuration.name = f"nb-big-{i}-" + "x" * 5300  # long names: the bulk of the bytes
        msg.neighbor_states[f"L2/nb-big-{i}"].CopyFrom(state)
        msg.host_resources[host.underlay_ip].resources.add(type=pb.NEIGHBOR, id=f"L2/nb-big-{i}")
    assert msg.ByteSize() > 10 * 1024 * 1024
    try:
        (reply,) = push_v2(stub, msg)
        assert len(reply.operation_statuses) == count
        assert set(status_by_id(reply).values()) == {"SUCCESS"}
        held = {n["id"] for n in sandbox.control(HOST, "neighbours")}
        assert {f"nb-big-{i}" for i in range(count)} <= held
    finally:  # keep the module's state small for the other tests (restart reloads all of it)
        delete = pb.GoalStateV2(format_version=1)
        for i in range(count):
            delete.neighbor_states[f"L2/nb-big-{i}"].operation_type = pb.DELETE
            delete.neighbor_states[f"L2/nb-big-{i}"].configuration.id = f"nb-big-{i}"
        (gone,) = push_v2(stub, delete)
    assert set(status_by_id(gone).values()) == {"SUCCESS"}
    assert not any(n["id"].startswith("nb-big-") for n in sandbox.control(HOST, "neighbours"))


# ---------------------------------------------------------------- 5. bytes that are no goal state
def test_garbage_is_invalid_argument_and_the_agent_goes_on(
    sandbox: Sandbox, channel: grpc.Channel, stub: pb_grpc.GoalStateProvisionerStub
) -> None:
    garbage = b"\xff\xff\xff\xff\x07garbage"
    before = sandbox.control(HOST, "status")["counters"].get("grpc_undecodable", 0)
    unary = channel.unary_unary(V1_PATH)  # no serializers: bytes in, bytes out
    with pytest.raises(grpc.RpcError) as err:
        unary(garbage, timeout=TIMEOUT, wait_for_ready=True)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert list(push_v1(stub, g.goal_state_v1(g.vpc(VPC, VNI))).operation_statuses)

    # In a stream: the good message before the garbage is answered, then the call fails.
    stream = channel.stream_stream(V2_PATH)
    good = g.goal_state_v2(g.vpc(VPC, VNI)).SerializeToString()
    replies: list[bytes] = []
    with pytest.raises(grpc.RpcError) as err:
        replies.extend(stream(iter([good, garbage]), timeout=TIMEOUT, wait_for_ready=True))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [statuses(pb.GoalStateOperationReply.FromString(r)) for r in replies] == [
        [(VPC, "VPC", "CREATE", "SUCCESS")]
    ]
    assert len(push_v2(stub, pb.GoalStateV2())) == 1
    assert sandbox.control(HOST, "status")["counters"]["grpc_undecodable"] == before + 2


# ---------------------------------------------------------------- 6. idempotence and revisions
def test_same_create_twice_and_out_of_order(
    sandbox: Sandbox, host: HostInfo, stub: pb_grpc.GoalStateProvisionerStub
) -> None:
    port_id, mac = "port-idem", "02:00:00:00:06:01"
    sandbox.vm_add(HOST, "idem", mac, "10.0.0.61/24", iface_id=port_id)

    def message(revision: int, port_mac: str, nb_mac: str) -> pb.GoalStateV2:
        return g.goal_state_v2(
            g.vpc(VPC, VNI),
            context_subnet(),
            g.port(port_id, VPC, SUBNET, "10.0.0.61", port_mac, host_ip=host.underlay_ip, revision=revision),
            neighbour("nb-idem", 62, revision=revision, mac=nb_mac),
            host_ip=host.underlay_ip,
        )

    current = message(2, mac, "02:00:00:00:06:02")
    push_v2(stub, current)
    wait_for(
        lambda: by_id(sandbox.control(HOST, "ports"))[port_id]["state"] == "programmed",
        what="the plugged port to be programmed",
    )
    before = snapshot(sandbox)
    assert by_id(before["ports"])[port_id]["ofport"] is not None
    expected = {VPC: "SUCCESS", port_id: "SUCCESS", "nb-idem": "SUCCESS"}
    for _ in range(2):
        (reply,) = push_v2(stub, current)
        assert status_by_id(reply) == expected
        assert snapshot(sandbox) == before

    (stale,) = push_v2(stub, message(1, "02:00:00:00:06:99", "02:00:00:00:06:98"))
    assert status_by_id(stale) == {VPC: "SUCCESS", port_id: "OUT_OF_ORDER", "nb-idem": "OUT_OF_ORDER"}
    assert snapshot(sandbox) == before


# ---------------------------------------------------------------- 7. one bad resource, the rest applies
def test_invalid_resource_rejected_alone(
    sandbox: Sandbox, host: HostInfo, stub: pb_grpc.GoalStateProvisionerStub
) -> None:
    msg = g.goal_state_v2(
        g.vpc(VPC, VNI),
        context_subnet(),
        neighbour("nb-good", 71),
        neighbour("nb-bad-mac", 72, mac="02:00:00:00:zz:72"),
        g.neighbor("nb-multicast", VPC, SUBNET, "10.0.0.74", "01:00:5e:00:00:74", REMOTE_HOST),
        g.port("port-no-subnet", VPC, "sn-missing", "10.9.0.5", "02:00:00:00:07:03"),
        g.port("port-outside", VPC, SUBNET, "10.9.0.6", "02:00:00:00:07:04"),
        host_ip=host.underlay_ip,
    )
    (reply,) = push_v2(stub, msg)
    assert status_by_id(reply) == {
        VPC: "SUCCESS",
        "nb-good": "SUCCESS",
        "nb-bad-mac": "INVALID_ARG",
        "nb-multicast": "INVALID_ARG",
        "port-no-subnet": "INVALID_ARG",
        "port-outside": "INVALID_ARG",
    }
    held_nbs = set(by_id(sandbox.control(HOST, "neighbours")))
    held_ports = set(by_id(sandbox.control(HOST, "ports")))
    assert "nb-good" in held_nbs
    assert not {"nb-bad-mac", "nb-multicast"} & held_nbs
    assert not {"port-no-subnet", "port-outside"} & held_ports


# ---------------------------------------------------------------- 8. crash and restart
def test_state_survives_sigkill(
    sandbox: Sandbox, host: HostInfo, stub: pb_grpc.GoalStateProvisionerStub
) -> None:
    (reply,) = push_v2(
        stub,
        g.goal_state_v2(
            g.vpc(VPC, VNI),
            context_subnet(),
            g.port("port-restart", VPC, SUBNET, "10.0.0.81", "02:00:00:00:08:01", host_ip=host.underlay_ip),
            neighbour("nb-restart", 82),
            host_ip=host.underlay_ip,
        ),
    )
    assert status_by_id(reply) == {VPC: "SUCCESS", "port-restart": "PENDING", "nb-restart": "SUCCESS"}
    before = snapshot(sandbox)
    assert "port-restart" in by_id(before["ports"]) and "nb-restart" in by_id(before["neighbours"])
    old_pid = sandbox.host(HOST).agent_pid
    assert old_pid is not None

    restarted = sandbox.restart_agent(HOST, sig=signal.SIGKILL)
    assert process_gone(old_pid) and restarted.agent_pid != old_pid
    # No push: the held state comes back from disk and the switch is resynced from it.
    wait_for(lambda: snapshot(sandbox) == before, timeout=15, what="the held state after the restart")
    status = sandbox.control(HOST, "status")
    assert status["counters"].get("goal_states", 0) == 0
    assert status["dataplane_ready"] is True
    # The flows outlived the agent: the start-up resync found every one in place.
    resync = re.findall(r"event=resync .*", pathlib.Path(host.log_file).read_text())[-1]
    assert " added=0 deleted=0 " in resync, resync
    # And it answers again.
    (again,) = push_v2(stub, pb.GoalStateV2())
    assert list(again.operation_statuses) == []


# ---------------------------------------------------------------- 9. a client built from the schema alone
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | str | bytes) -> bytes:
    """One field: an int is a varint (wire type 0), str/bytes are length-delimited (wire type 2)."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _msg(*fields: bytes) -> bytes:
    return b"".join(fields)


def _entry(number: int, key: str, value: bytes) -> bytes:
    """A map<string, Message> entry: key is field 1, value field 2."""
    return _field(number, _msg(_field(1, key), _field(2, value)))


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _parse(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a message that uses only varint and length-delimited fields."""
    fields: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = _read_varint(data, i)
            fields.append((number, value))
        elif wire_type == 2:
            length, i = _read_varint(data, i)
            fields.append((number, data[i : i + length]))
            i += length
        else:
            raise AssertionError(f"unexpected wire type {wire_type} for field {number}")
    return fields


# GoalStateOperationStatus fields 1..7 in contract order.
STATUS_FIELDS = (
    "resource_id",
    "resource_type",
    "operation_type",
    "operation_status",
    "dataplane_programming_time",
    "network_configuration_time",
    "state_elapse_time",
)


def _decode_reply(data: bytes) -> tuple[int, list[dict[str, Any]], int]:
    """GoalStateOperationReply → (format_version, statuses, message_total_operation_time)."""
    names = dict(enumerate(STATUS_FIELDS, start=1))
    version, total, out = 0, 0, []
    for number, value in _parse(data):
        if number == 1:
            version = value  # type: ignore[assignment]
        elif number == 3:
            total = value  # type: ignore[assignment]
        elif number == 2:
            status: dict[str, Any] = {name: 0 for name in names.values()} | {"resource_id": ""}
            for sub, sub_value in _parse(value):  # type: ignore[arg-type]
                status[names[sub]] = sub_value.decode() if sub == 1 else sub_value  # type: ignore[union-attr]
            out.append(status)
    return version, out, total


# Enum values straight from the contract.
VPC_T, PORT_T, NEIGHBOR_T = 0, 2, 3
INFO, CREATE = 0, 1
SUCCESS, INVALID_ARG = 0, 2


def _wire_vpc() -> bytes:
    config = _msg(_field(1, 1), _field(3, VPC), _field(7, "10.0.0.0/16"), _field(8, VNI))
    return _msg(_field(1, CREATE), _field(2, config))


def _wire_subnet() -> bytes:
    config = _msg(_field(1, 1), _field(3, SUBNET), _field(6, VPC), _field(8, CIDR), _field(9, VNI))
    return _msg(_field(1, INFO), _field(2, config))


def _wire_neighbour(nid: str, ip: str, mac: str) -> bytes:
    fixed_ip = _msg(_field(1, 0), _field(2, SUBNET), _field(3, ip))  # neighbor_type L2
    config = _msg(
        _field(1, 1),
        _field(3, nid),
        _field(5, VPC),
        _field(7, mac),
        _field(9, REMOTE_HOST),
        _field(10, fixed_ip),
    )
    return _msg(_field(1, CREATE), _field(2, config))


def test_hand_encoded_wire_messages(sandbox: Sandbox, host: HostInfo, channel: grpc.Channel) -> None:
    # GoalStateV2: host_resources (2) lists what this host acts on; nb-wire-other is context only.
    mine = _msg(
        _field(1, _msg(_field(1, VPC_T), _field(2, VPC))),
        _field(1, _msg(_field(1, NEIGHBOR_T), _field(2, "L2/nb-wire-v2"))),
    )
    v2 = _msg(
        _field(1, 1),
        _entry(2, host.underlay_ip, mine),
        _entry(3, VPC, _wire_vpc()),
        _entry(4, SUBNET, _wire_subnet()),
        _entry(7, "L2/nb-wire-v2", _wire_neighbour("nb-wire-v2", "10.0.0.91", "02:00:00:00:09:01")),
        _entry(7, "L2/nb-wire-other", _wire_neighbour("nb-wire-other", "10.0.0.92", "02:00:00:00:09:02")),
    )
    stream = channel.stream_stream(V2_PATH)
    (raw,) = list(stream(iter([v2]), timeout=TIMEOUT, wait_for_ready=True))
    version, got, total = _decode_reply(raw)
    assert version == 1 and total > 0
    assert [
        (s["resource_id"], s["resource_type"], s["operation_type"], s["operation_status"]) for s in got
    ] == [
        (VPC, VPC_T, CREATE, SUCCESS),
        ("nb-wire-v2", NEIGHBOR_T, CREATE, SUCCESS),
    ]
    assert all(s["state_elapse_time"] > 0 for s in got)

    # GoalState v1: repeated states, 2 vpc, 3 subnet, 4 port, 5 neighbor. The port's MAC is bad.
    bad_port = _msg(_field(1, 1), _field(3, "port-wire-bad"), _field(5, VPC), _field(9, "not-a-mac"))
    v1 = _msg(
        _field(1, 1),
        _field(2, _wire_vpc()),
        _field(3, _wire_subnet()),
        _field(4, _msg(_field(1, CREATE), _field(2, bad_port))),
        _field(5, _wire_neighbour("nb-wire-v1", "10.0.0.93", "02:00:00:00:09:03")),
    )
    unary = channel.unary_unary(V1_PATH)
    version, got, _total = _decode_reply(unary(v1, timeout=TIMEOUT, wait_for_ready=True))
    assert version == 1
    assert [(s["resource_id"], s["resource_type"], s["operation_status"]) for s in got] == [
        (VPC, VPC_T, SUCCESS),
        ("port-wire-bad", PORT_T, INVALID_ARG),
        ("nb-wire-v1", NEIGHBOR_T, SUCCESS),
    ]
    held = by_id(sandbox.control(HOST, "neighbours"))
    assert held["nb-wire-v2"]["mac"] == "02:00:00:00:09:01"
    assert held["nb-wire-v1"]["ips"] == ["10.0.0.93"]
    assert "port-wire-bad" not in by_id(sandbox.control(HOST, "ports"))
