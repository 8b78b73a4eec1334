"""A flood of maximum-size goal states over real gRPC leaves the agent under its memory ceiling.

The agent runs at scaled-down bounds (8 MiB messages, an 8 MiB core budget, 4 concurrent RPCs)
so the flood takes seconds; the ceiling is the formula docs/reliability.md documents for any
bounds (``bench.memory_flood.ceiling_mb``: the RSS holding the state, plus 7x the core budget for
goal states parsed and decoded, plus 2x the largest message per concurrent RPC). Six clients push
at once, twice each, a message just under the limit (v2 and v1) holding the neighbours the agent
already holds, so the state does not grow: every push is SUCCESS or RESOURCE_EXHAUSTED (from the
core, counted in `acactl status`, or from grpc's RPC limit), the agent's peak RSS (VmHWM) stays
under the ceiling, and it then answers a small goal state with SUCCESS.

Over Kafka nothing is refused: goal states produced while the flood fills the core wait for room
(uncommitted) and every one is applied and committed.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from agent._pb import goalstate_pb2_grpc as pb_grpc
from agent.sandbox import goalstates as g
from agent.sandbox.hosts import HostInfo, Sandbox
from agent.sandbox.kafka import KafkaBroker, running_broker
from agent.sandbox.ovs import process_gone
from agent.sandbox.poll import wait_for
from bench.common import rss_mb
from bench.memory_flood import SUBNET, UNLIMITED_REPLIES, VPC, alcor_states, ceiling_mb, flood, push
from tests.support.agent_host import scratch_sandbox, status_by_id
from tests.support.kafka_agent import agent_config, committed_offset
from tests.support.parts import require_ovs, require_tansu

pytestmark = pytest.mark.integration

require_ovs()

HOST = "host1"
MAX_MESSAGE_MB, CORE_QUEUE_MB, MAX_RPCS = 8, 8, 4
NEIGHBOURS = 27_000  # 7.8 MiB as a GoalStateV2
CLIENTS, PUSHES = 6, 2
TIMEOUT = 120.0
BOUNDS = (
    f"[agent]\ncore_queue_mb = {CORE_QUEUE_MB}\n"
    f"[grpc]\nmax_message_mb = {MAX_MESSAGE_MB}\nmaximum_concurrent_rpcs = {MAX_RPCS}\n"
)
TOPIC, GROUP = f"host-{HOST}", f"aca-agent-{HOST}"  # the agent's defaults for --host-id host1


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    config = tmp_path_factory.mktemp("bounds") / "agent.toml"
    config.write_text(BOUNDS)
    with scratch_sandbox() as sb:
        sb.host_up(HOST, agent_args=["--config", str(config)])
        yield sb


@pytest.fixture(scope="module")
def kafka_sandbox() -> Iterator[tuple[Sandbox, KafkaBroker]]:
    """The same bounds, and Kafka intake from a broker on the host namespace's loopback."""
    require_tansu()
    with contextlib.ExitStack() as stack:
        sb = stack.enter_context(scratch_sandbox())
        host = sb.host_up(HOST, agent=False)
        broker = stack.enter_context(running_broker(netns=host.netns))
        stack.callback(sb.stop_agent, HOST)  # unwound first: the agent leaves while the broker runs
        broker.create_topic(TOPIC)
        config = agent_config(host, broker, reply_topic="")
        config.write_text(BOUNDS + config.read_text())
        host = sb.restart_agent(HOST, agent_args=["--config", str(config)])
        log = pathlib.Path(host.log_file)
        wait_for(lambda: "event=kafka_assigned" in log.read_text(), what="the agent to join its group")
        yield sb, broker


def hold_maximum_size_state(sandbox: Sandbox, host: HostInfo) -> list:
    """Push a maximum-size goal state once (programmed); its states, for the flood to repeat."""
    held = alcor_states(NEIGHBOURS)
    v2 = g.goal_state_v2(*held, host_ip=host.underlay_ip)
    size = v2.ByteSize()
    assert 0.9 * (MAX_MESSAGE_MB << 20) < size <= MAX_MESSAGE_MB << 20, f"not maximum-size: {size} bytes"
    with sandbox.channel(host.name, UNLIMITED_REPLIES) as channel:
        first = push(pb_grpc.GoalStateProvisionerStub(channel), v2, TIMEOUT)
    assert set(status_by_id(first).values()) == {"SUCCESS"}
    return [v2, g.goal_state_v1(*held)]


def test_a_flood_of_maximum_size_pushes_stays_under_the_ceiling_and_the_agent_answers(
    sandbox: Sandbox,
) -> None:
    host = sandbox.host(HOST)
    pid = host.agent_pid
    assert pid is not None
    messages = hold_maximum_size_state(sandbox, host)
    state_rss = rss_mb(pid)  # the state held; the flood adds none

    outcomes = flood(
        lambda: sandbox.channel(host.name, UNLIMITED_REPLIES), messages, CLIENTS, PUSHES, TIMEOUT
    )

    peak = rss_mb(pid, "VmHWM")
    ceiling = ceiling_mb(state_rss, CORE_QUEUE_MB, MAX_RPCS, MAX_MESSAGE_MB)
    print(f"state_rss_mib={state_rss:.0f} peak_rss_mib={peak:.0f} ceiling_mib={ceiling:.0f} {dict(outcomes)}")
    assert set(outcomes) <= {"SUCCESS", "RESOURCE_EXHAUSTED:core", "RESOURCE_EXHAUSTED:grpc"}, outcomes
    assert 1 <= outcomes["SUCCESS"] < CLIENTS * PUSHES, outcomes
    counters = sandbox.control(HOST, "status")["counters"]
    assert counters.get("goal_states_refused_busy", 0) == outcomes["RESOURCE_EXHAUSTED:core"]
    assert peak <= ceiling, f"peak RSS {peak:.0f} MiB over the ceiling {ceiling:.0f} MiB"

    assert not process_gone(pid), "the agent died in the flood"
    small = g.goal_state_v2(
        *alcor_states(0),
        g.neighbor("nb-after-flood", VPC, SUBNET, "10.190.0.1", "fa:16:3e:ff:00:01", "172.30.0.99"),
        host_ip=host.underlay_ip,
    )
    (reply,) = sandbox.push_message(HOST, small)
    assert set(status_by_id(reply).values()) == {"SUCCESS"} and "nb-after-flood" in status_by_id(reply)


def test_kafka_goal_states_produced_during_a_flood_wait_for_room_and_none_is_lost(
    kafka_sandbox: tuple[Sandbox, KafkaBroker],
) -> None:
    sb, broker = kafka_sandbox
    host = sb.host(HOST)
    messages = hold_maximum_size_state(sb, host)
    outcomes: Counter[str] = Counter()
    pushes = threading.Thread(
        target=lambda: outcomes.update(
            flood(lambda: sb.channel(host.name, UNLIMITED_REPLIES), messages, CLIENTS, PUSHES, TIMEOUT)
        )
    )
    pushes.start()
    ids = [f"nb-kafka-{i}" for i in range(5)]
    offsets = [
        broker.produce(
            TOPIC,
            g.goal_state_v2(
                *alcor_states(0),
                g.neighbor(
                    nid, VPC, SUBNET, f"10.191.0.{i + 1}", f"fa:16:3e:fe:00:{i + 1:02x}", "172.30.0.98"
                ),
                host_ip=host.underlay_ip,
            ).SerializeToString(),
        )
        for i, nid in enumerate(ids)
    ]
    pushes.join(2 * TIMEOUT * PUSHES)
    assert not pushes.is_alive()
    assert outcomes["RESOURCE_EXHAUSTED:core"] >= 1, outcomes  # the core was full meanwhile

    def applied() -> dict[str, str]:
        return {n["id"]: n["state"] for n in sb.control(HOST, "neighbours") if n["id"] in ids}

    wait_for(lambda: applied() == dict.fromkeys(ids, "programmed"), what="every Kafka goal state applied")
    wait_for(lambda: committed_offset(broker, TOPIC, GROUP) == offsets[-1] + 1, what="all of them committed")
    counters = sb.control(HOST, "status")["counters"]
    assert counters.get("kafka_applied", 0) >= len(ids)
    assert not any(counters.get(f"kafka_{name}") for name in ("apply_failed", "poison")), counters
