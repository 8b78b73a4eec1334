"""aca-agent as a process consuming its Kafka topic: the broker (tansu) runs inside the sandbox
host's namespace, on its loopback, so nothing leaves the namespaces the test creates.

One host, one broker, one agent for the module. Tests track offsets relative to what is already
on the topic; the broker-restart test wipes the broker's memory storage and so runs last.
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from agent._pb import goalstate_pb2 as pb
from agent.sandbox import goalstates as g
from agent.sandbox.hosts import HostInfo, Sandbox
from agent.sandbox.kafka import KafkaBroker, running_broker
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox, statuses
from tests.support.kafka_agent import agent_config, committed_offset
from tests.support.parts import require_ovs, require_tansu
from tests.support.traffic import dump_flows

pytestmark = pytest.mark.integration

require_ovs()
require_tansu()

HOST = "host1"
TOPIC = f"host-{HOST}"  # the agent's default topic for --host-id host1
GROUP = f"aca-agent-{HOST}"  # and its default group
REPLIES = f"{TOPIC}-replies"
VPC, VNI, SUBNET, CIDR = "vpc-1", 100, "sn-1", "10.0.0.0/24"
REMOTE_HOST = "172.31.0.99"


@dataclass
class KafkaHost:
    sandbox: Sandbox
    host: HostInfo
    broker: KafkaBroker

    def produce(self, msg: pb.GoalState | pb.GoalStateV2 | bytes, v1: bool = False) -> int:
        value = msg if isinstance(msg, bytes) else msg.SerializeToString()
        return self.broker.produce(TOPIC, value, headers={"alcor-format": "v1"} if v1 else None)

    def committed(self) -> int:
        return committed_offset(self.broker, TOPIC, GROUP)

    def wait_committed(self, offset: int) -> None:
        wait_for(lambda: self.committed() == offset + 1, what=f"commit past offset {offset}")

    def reply_for(self, offset: int) -> pb.GoalStateOperationReply:
        """The agent's reply to the goal state at ``offset`` of its topic."""

        def read() -> pb.GoalStateOperationReply | None:
            reader = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": "test-reply-reader"})
            try:
                reader.assign([TopicPartition(REPLIES, 0, OFFSET_BEGINNING)])
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    msg = reader.poll(0.2)
                    if msg is None or msg.error() is not None:
                        continue
                    if dict(msg.headers() or ()).get("alcor-source-offset") == str(offset).encode():
                        return pb.GoalStateOperationReply.FromString(msg.value())
                return None
            finally:
                reader.close()

        reply = self.broker.call(read)
        assert reply is not None, f"no reply for offset {offset}"
        return reply

    def neighbours(self) -> dict[str, dict[str, object]]:
        return {n["id"]: n for n in self.sandbox.control(HOST, "neighbours")}


@pytest.fixture(scope="module")
def kafka_host() -> Iterator[KafkaHost]:
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(scratch_sandbox())
        host = sandbox.host_up(HOST, agent=False)
        broker = stack.enter_context(running_broker(netns=host.netns))
        # Unwound first: the agent leaves the group while the broker is still there.
        stack.callback(sandbox.stop_agent, HOST)
        broker.create_topic(TOPIC)
        broker.create_topic(REPLIES)
        host = sandbox.restart_agent(HOST, agent_args=["--config", str(agent_config(host, broker, REPLIES))])
        yield KafkaHost(sandbox, host, broker)


def goal_state(host: HostInfo, nid: str, last_octet: int) -> pb.GoalStateV2:
    """A VPC, its subnet as context, and one neighbour this host acts on."""
    return g.goal_state_v2(
        g.vpc(VPC, VNI),
        g.subnet(SUBNET, VPC, CIDR, VNI),
        g.neighbor(nid, VPC, SUBNET, f"10.0.0.{last_octet}", f"02:00:00:00:00:{last_octet:02x}", REMOTE_HOST),
        host_ip=host.underlay_ip,
    )


def test_broker_lives_only_in_the_host_namespace(kafka_host: KafkaHost) -> None:
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", kafka_host.broker.port), 0.5).close()
    wait_for(
        lambda: "event=kafka_assigned" in pathlib.Path(kafka_host.host.log_file).read_text(),
        what="the agent to join its group",
    )


def test_v2_goal_state_applied_then_committed(kafka_host: KafkaHost) -> None:
    offset = kafka_host.produce(goal_state(kafka_host.host, "nb-k-v2", 10))
    wait_for(lambda: "nb-k-v2" in kafka_host.neighbours(), what="the neighbour to be applied")
    kafka_host.wait_committed(offset)
    assert kafka_host.neighbours()["nb-k-v2"]["state"] == "programmed"
    assert statuses(kafka_host.reply_for(offset)) == [
        (VPC, "VPC", "CREATE", "SUCCESS"),
        ("nb-k-v2", "NEIGHBOR", "CREATE", "SUCCESS"),
    ]


def test_grpc_and_kafka_feeding_at_once_lose_nothing(kafka_host: KafkaHost) -> None:
    """Both intakes feed the one worker queue: everything applies, each resource once."""
    ids = [f"nb-mix-{n}" for n in range(40)]

    def over_grpc() -> None:
        for n in range(0, 40, 2):
            (reply,) = kafka_host.sandbox.push_message(HOST, goal_state(kafka_host.host, ids[n], 150 + n))
            assert [s.operation_status for s in reply.operation_statuses] == [pb.SUCCESS, pb.SUCCESS]

    sender = threading.Thread(target=over_grpc)
    sender.start()
    offsets = [kafka_host.produce(goal_state(kafka_host.host, ids[n], 150 + n)) for n in range(1, 40, 2)]
    sender.join(60)
    assert not sender.is_alive()
    kafka_host.wait_committed(offsets[-1])
    held = kafka_host.neighbours()
    assert all(held[i]["state"] == "programmed" and held[i]["flows"] > 0 for i in ids)


def test_v1_selected_by_header(kafka_host: KafkaHost) -> None:
    msg = g.goal_state_v1(
        g.subnet(SUBNET, VPC, CIDR, VNI),
        g.neighbor("nb-k-v1", VPC, SUBNET, "10.0.0.11", "02:00:00:00:00:11", REMOTE_HOST),
    )
    offset = kafka_host.produce(msg, v1=True)
    wait_for(lambda: "nb-k-v1" in kafka_host.neighbours(), what="the v1 neighbour to be applied")
    kafka_host.wait_committed(offset)
    assert statuses(kafka_host.reply_for(offset)) == [("nb-k-v1", "NEIGHBOR", "CREATE", "SUCCESS")]


def test_poison_is_skipped_and_the_next_applies(kafka_host: KafkaHost) -> None:
    poison = kafka_host.produce(b"\xff\xff\xff\xff")
    good = kafka_host.produce(goal_state(kafka_host.host, "nb-k-after-poison", 12))
    wait_for(lambda: "nb-k-after-poison" in kafka_host.neighbours(), what="the goal state after the poison")
    kafka_host.wait_committed(good)
    log = pathlib.Path(kafka_host.host.log_file).read_text()
    lines = [line for line in log.splitlines() if "event=kafka_poison" in line]
    assert len(lines) == 1
    assert f"topic={TOPIC} partition=0 offset={poison} " in lines[0]


def test_produced_while_down_applies_after_restart_and_redelivery_is_a_no_op(kafka_host: KafkaHost) -> None:
    kafka_host.sandbox.stop_agent(HOST, sig=signal.SIGKILL)
    msg = goal_state(kafka_host.host, "nb-k-down", 13)
    offset = kafka_host.produce(msg)
    kafka_host.host = kafka_host.sandbox.restart_agent(HOST)
    wait_for(lambda: "nb-k-down" in kafka_host.neighbours(), what="the goal state produced while down")
    kafka_host.wait_committed(offset)
    first = statuses(kafka_host.reply_for(offset))
    assert first == [(VPC, "VPC", "CREATE", "SUCCESS"), ("nb-k-down", "NEIGHBOR", "CREATE", "SUCCESS")]

    def held() -> tuple[Any, list[str]]:  # the agent's neighbours, the switch's flows (from OVS)
        return kafka_host.sandbox.control(HOST, "neighbours"), dump_flows(kafka_host.sandbox, HOST)

    before = held()

    again = kafka_host.produce(msg)  # the same record once more, as a redelivery looks to the agent
    kafka_host.wait_committed(again)
    assert statuses(kafka_host.reply_for(again)) == first
    assert held() == before


def test_consumes_again_after_broker_restart(kafka_host: KafkaHost) -> None:
    """Memory storage comes back empty: topics recreated, offsets start at 0 again."""
    before = kafka_host.produce(goal_state(kafka_host.host, "nb-k-before-restart", 14))
    kafka_host.wait_committed(before)
    kafka_host.broker.restart()
    kafka_host.broker.create_topic(TOPIC)
    kafka_host.broker.create_topic(REPLIES)
    after = kafka_host.produce(goal_state(kafka_host.host, "nb-k-after-restart", 15))
    assert after == 0
    wait_for(
        lambda: "nb-k-after-restart" in kafka_host.neighbours(),
        timeout=30,
        what="the goal state produced after the broker restart",
    )
    kafka_host.wait_committed(after)
    assert statuses(kafka_host.reply_for(after))[-1] == (
        "nb-k-after-restart",
        "NEIGHBOR",
        "CREATE",
        "SUCCESS",
    )
