"""A flood of maximum-size goal states over real gRPC leaves the agent under its memory ceiling.

The agent runs at scaled-down bounds (8 MiB messages, an 8 MiB core budget, 4 concurrent RPCs)
so the flood takes seconds; the ceiling is the formula docs/reliability.md documents for every
setting: the RSS holding the state, plus at most 7x the core budget (goal states parsed and
decoded) and 2x the largest message per concurrent RPC (received, not yet admitted).
Six clients push at once, twice each, a message of just under the limit (v1 and v2) holding the
same neighbours the agent already holds, so the state does not grow: every push either succeeds
or is refused with RESOURCE_EXHAUSTED (by the core, counted, or by grpc's RPC limit), the agent's
peak RSS (VmHWM) stays under the ceiling, and it then answers a small goal state with SUCCESS.
"""

from __future__ import annotations

import collections
import ipaddress
import pathlib
import threading
import uuid
from collections.abc import Iterator

import grpc
import pytest

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc
from agent.sandbox import goalstates as g
from agent.sandbox.hosts import HostInfo, Sandbox
from agent.sandbox.ovs import process_gone
from tests.support.agent_host import scratch_sandbox, status_by_id
from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration

require_ovs()

HOST = "host1"
MAX_MESSAGE_MB, CORE_QUEUE_MB, MAX_RPCS = 8, 8, 4
NEIGHBOURS = 27_000  # with UUID ids as Alcor sends them: 7.8 MiB as a GoalStateV2
CLIENTS, PUSHES = 6, 2
VPC, SUBNET, VNI, CIDR = str(uuid.uuid4()), str(uuid.uuid4()), 5000, "10.128.0.0/10"
MiB = 1024 * 1024
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 2 * MAX_MESSAGE_MB * MiB)]
TIMEOUT = 120.0


def ceiling_mib(state_rss_mib: float) -> float:
    """docs/reliability.md, "Memory ceiling": the state's RSS plus what the bounds let in."""
    return state_rss_mib + 7 * CORE_QUEUE_MB + 2 * MAX_RPCS * MAX_MESSAGE_MB


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (the peak since the start) of ``pid``, in MiB."""
    fields = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def context() -> list:
    return [g.vpc(VPC, VNI, CIDR), g.subnet(SUBNET, VPC, CIDR, VNI, "10.128.0.1", op=g.CREATE)]


def neighbours(count: int) -> list[pb.NeighborState]:
    base = int(ipaddress.IPv4Address("10.128.0.16"))
    return [
        g.neighbor(
            str(uuid.uuid4()), VPC, SUBNET, str(ipaddress.IPv4Address(base + i)),
            f"fa:16:3e:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}",
            f"172.30.0.{i % 50 + 1}",
        )
        for i in range(count)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    config = tmp_path_factory.mktemp("bounds") / "agent.toml"
    config.write_text(
        f"[agent]\ncore_queue_mb = {CORE_QUEUE_MB}\n"
        f"[grpc]\nmax_message_mb = {MAX_MESSAGE_MB}\nmaximum_concurrent_rpcs = {MAX_RPCS}\n"
    )
    with scratch_sandbox() as sb:
        sb.host_up(HOST, agent_args=["--config", str(config)])
        yield sb


def push(
    stub: pb_grpc.GoalStateProvisionerStub, msg: pb.GoalState | pb.GoalStateV2
) -> pb.GoalStateOperationReply:
    if isinstance(msg, pb.GoalState):
        return stub.PushNetworkResourceStates(msg, timeout=TIMEOUT)
    (reply,) = stub.PushGoalStatesStream(iter([msg]), timeout=TIMEOUT)
    return reply


def flood(host: HostInfo, messages: list[pb.GoalState | pb.GoalStateV2]) -> list[str]:
    """Each client on its own connection pushes ``messages`` in turn, all clients starting at
    once; every outcome: SUCCESS, or the refusal's code and who refused (core or grpc)."""
    outcomes: list[str] = []
    start = threading.Barrier(CLIENTS)

    def client(first: int) -> None:
        with grpc.insecure_channel(host.grpc, options=CHANNEL_OPTIONS) as channel:
            stub = pb_grpc.GoalStateProvisionerStub(channel)
            start.wait()
            for n in range(PUSHES):
                try:
                    reply = push(stub, messages[(first + n) % len(messages)])
                    outcomes.append(",".join(sorted(set(status_by_id(reply).values()))))
                except grpc.RpcError as exc:
                    who = "core" if "goal states" in (exc.details() or "") else "grpc"
                    outcomes.append(f"{exc.code().name}:{who}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(2 * TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    return outcomes


def test_a_flood_of_maximum_size_pushes_stays_under_the_ceiling_and_the_agent_answers(
    sandbox: Sandbox,
) -> None:
    host = sandbox.host(HOST)
    held = [*context(), *neighbours(NEIGHBOURS)]
    v2 = g.goal_state_v2(*held, host_ip=host.underlay_ip)
    v1 = g.goal_state_v1(*held)
    size = v2.ByteSize()
    assert 0.9 * MAX_MESSAGE_MB * MiB < size <= MAX_MESSAGE_MB * MiB, f"not maximum-size: {size} bytes"
    with grpc.insecure_channel(host.grpc, options=CHANNEL_OPTIONS) as channel:
        first = push(pb_grpc.GoalStateProvisionerStub(channel), v2)
    assert set(status_by_id(first).values()) == {"SUCCESS"}
    state_rss = memory_mib(host.agent_pid)["VmRSS"]  # the state held; the flood adds none

    outcomes = flood(host, [v2, v1])

    counts = collections.Counter(outcomes)
    print(f"state_rss_mib={state_rss:.0f} outcomes={dict(counts)} memory={memory_mib(host.agent_pid)}")
    assert set(counts) <= {"SUCCESS", "RESOURCE_EXHAUSTED:core", "RESOURCE_EXHAUSTED:grpc"}, counts
    assert counts["SUCCESS"] >= 1 and counts["SUCCESS"] < CLIENTS * PUSHES, counts
    status = sandbox.control(HOST, "status")
    assert status["counters"].get("goal_states_refused_busy", 0) == counts["RESOURCE_EXHAUSTED:core"]
    peak = memory_mib(host.agent_pid)["VmHWM"]
    assert peak <= ceiling_mib(state_rss), f"peak RSS {peak:.0f} MiB over {ceiling_mib(state_rss):.0f} MiB"

    assert not process_gone(host.agent_pid), "the agent died in the flood"
    small = g.goal_state_v2(
        *context(),
        g.neighbor("nb-after-flood", VPC, SUBNET, "10.190.0.1", "fa:16:3e:ff:00:01", "172.30.0.99"),
        host_ip=host.underlay_ip,
    )
    (reply,) = sandbox.push_message(HOST, small)
    assert status_by_id(reply)["nb-after-flood"] == "SUCCESS"
