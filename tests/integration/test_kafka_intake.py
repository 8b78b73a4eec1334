"""KafkaIntake against a real Kafka-protocol broker (tansu on loopback).

`apply` is a recording stand-in for the core: these tests pin the transport's promises
(decode by header, commit only after apply, poison skipped, replies, reconnects, redelivery).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, Consumer, TopicPartition

from agent._pb import goalstate_pb2 as pb
from agent.intake.kafka_consumer import ApplyFn, DecodedGoalState, IntakeState, KafkaIntake, KafkaSettings
from agent.sandbox.kafka import FAST_GROUP_OPTIONS, KafkaBroker, running_broker
from agent.sandbox.poll import wait_for
from tests.support.kafka_agent import group_committed
from tests.support.parts import require_tansu

pytestmark = pytest.mark.integration

require_tansu()


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    with running_broker() as started:
        yield started


@pytest.fixture
def settings(broker: KafkaBroker) -> KafkaSettings:
    """A fresh topic and group per test, so tests sharing the broker never see each other."""
    suffix = uuid.uuid4().hex[:8]
    broker.create_topic(f"host-{suffix}")
    return KafkaSettings(
        bootstrap_servers=broker.bootstrap,
        topic=f"host-{suffix}",
        group_id=f"aca-{suffix}",
        extra=FAST_GROUP_OPTIONS,
        poll_timeout_s=0.1,
    )


class RecordingApply:
    """Stands in for the core: records every goal state, optionally failing until `healthy` is set."""

    def __init__(self, healthy: bool = True) -> None:
        self.calls: list[DecodedGoalState] = []
        self.healthy = threading.Event()
        if healthy:
            self.healthy.set()

    def __call__(self, goal_state: DecodedGoalState) -> pb.GoalStateOperationReply:
        self.calls.append(goal_state)
        if not self.healthy.is_set():
            raise RuntimeError("injected apply failure")
        return pb.GoalStateOperationReply(
            format_version=goal_state.format_version,
            operation_statuses=[
                pb.GoalStateOperationReply.GoalStateOperationStatus(
                    resource_id=port_id, resource_type=pb.PORT, operation_status=pb.SUCCESS
                )
                for port_id in _port_ids(goal_state)
            ],
        )


def _port_ids(goal_state: DecodedGoalState) -> list[str]:
    if isinstance(goal_state, pb.GoalState):
        return [state.configuration.id for state in goal_state.port_states]
    return list(goal_state.port_states)


def goal_state_v2(port_id: str) -> pb.GoalStateV2:
    port = pb.PortState(
        operation_type=pb.CREATE,
        configuration=pb.PortConfiguration(id=port_id, vpc_id="vpc-1", mac_address="fa:16:3e:00:00:01"),
    )
    return pb.GoalStateV2(format_version=1, port_states={port_id: port})


def goal_state_v1(port_id: str) -> pb.GoalState:
    port = pb.PortState(operation_type=pb.CREATE, configuration=pb.PortConfiguration(id=port_id))
    return pb.GoalState(format_version=1, port_states=[port])


@contextlib.contextmanager
def running_intake(settings: KafkaSettings, apply: ApplyFn) -> Iterator[KafkaIntake]:
    intake = KafkaIntake(settings, apply)
    intake.start()
    try:
        yield intake
    finally:
        assert intake.stop(10)


def test_v2_goal_state_applied_once_then_committed(broker: KafkaBroker, settings: KafkaSettings) -> None:
    apply = RecordingApply()
    sent = goal_state_v2("port-a")
    broker.produce(settings.topic, sent.SerializeToString())
    with running_intake(settings, apply) as intake:
        wait_for(lambda: group_committed(settings) == 1, what="commit of offset 0")
        assert apply.calls == [sent]
        assert isinstance(apply.calls[0], pb.GoalStateV2)
        assert intake.counters["applied"] == 1
        assert intake.state is IntakeState.CONSUMING
    assert intake.state is IntakeState.STOPPED


def test_v1_selected_by_header(broker: KafkaBroker, settings: KafkaSettings) -> None:
    apply = RecordingApply()
    sent = goal_state_v1("port-v1")
    broker.produce(settings.topic, sent.SerializeToString(), headers={"alcor-format": "v1"})
    with running_intake(settings, apply):
        wait_for(lambda: group_committed(settings) == 1, what="commit of offset 0")
    assert apply.calls == [sent]
    assert isinstance(apply.calls[0], pb.GoalState)


def test_poison_is_logged_counted_and_committed_past(
    broker: KafkaBroker, settings: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aca.kafka")
    apply = RecordingApply()
    good = goal_state_v2("port-after-poison")
    broker.produce(settings.topic, b"\xff\xff\xff\xff")
    broker.produce(settings.topic, None)
    broker.produce(settings.topic, good.SerializeToString())
    with running_intake(settings, apply) as intake:
        wait_for(lambda: group_committed(settings) == 3, what="commit past the poison")
        assert apply.calls == [good]
        assert intake.counters["poison"] == 2
        assert intake.counters["applied"] == 1
    poison = [r.getMessage() for r in caplog.records if "event=kafka_poison" in r.getMessage()]
    assert len(poison) == 2
    assert f"topic={settings.topic} partition=0 offset=0" in poison[0]


def test_empty_value_is_an_empty_goal_state(broker: KafkaBroker, settings: KafkaSettings) -> None:
    """The controller's warm-up is an empty GoalStateV2, which serializes to zero bytes."""
    apply = RecordingApply()
    broker.produce(settings.topic, b"")
    with running_intake(settings, apply):
        wait_for(lambda: group_committed(settings) == 1, what="commit of the warm-up")
    assert apply.calls == [pb.GoalStateV2()]


def test_reply_is_produced_before_commit(broker: KafkaBroker, settings: KafkaSettings) -> None:
    reply_topic = f"{settings.topic}-replies"
    broker.create_topic(reply_topic)
    settings = dataclasses.replace(settings, reply_topic=reply_topic)
    apply = RecordingApply()
    broker.produce(settings.topic, goal_state_v2("port-r").SerializeToString())
    with running_intake(settings, apply):
        wait_for(lambda: group_committed(settings) == 1, what="commit of offset 0")

    reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "reply-reader"})
    try:
        reader.assign([TopicPartition(reply_topic, 0, OFFSET_BEGINNING)])
        msg = reader.poll(10)
    finally:
        reader.close()
    assert msg is not None and msg.error() is None
    assert msg.key() is None
    reply = pb.GoalStateOperationReply.FromString(msg.value())
    assert [s.resource_id for s in reply.operation_statuses] == ["port-r"]
    assert dict(msg.headers()) == {
        "alcor-format": b"v2",
        "alcor-source-topic": settings.topic.encode(),
        "alcor-source-partition": b"0",
        "alcor-source-offset": b"0",
    }


def test_failed_apply_is_not_committed_and_is_retried(broker: KafkaBroker, settings: KafkaSettings) -> None:
    apply = RecordingApply(healthy=False)
    sent = goal_state_v2("port-retry")
    broker.produce(settings.topic, sent.SerializeToString())
    with running_intake(settings, apply) as intake:
        wait_for(lambda: len(apply.calls) >= 2, what="a retry after the failure")
        assert group_committed(settings) == OFFSET_INVALID
        apply.healthy.set()
        wait_for(lambda: group_committed(settings) == 1, what="commit after the retry succeeded")
        assert intake.counters["applied"] == 1
        assert intake.counters["apply_failed"] == len(apply.calls) - 1
    assert all(call == sent for call in apply.calls)


def test_consumes_again_after_broker_restart() -> None:
    """Memory storage comes back empty, so the topic is recreated: the client must rejoin and fetch."""
    with running_broker() as own:
        own.create_topic("host-restart")
        settings = KafkaSettings(
            own.bootstrap, "host-restart", "aca-restart", extra=FAST_GROUP_OPTIONS, poll_timeout_s=0.1
        )
        apply = RecordingApply()
        before, after = goal_state_v2("port-before"), goal_state_v2("port-after")
        own.produce(settings.topic, before.SerializeToString())
        with running_intake(settings, apply):
            wait_for(lambda: group_committed(settings) == 1, what="commit before the restart")
            own.restart()
            own.create_topic(settings.topic)
            own.produce(settings.topic, after.SerializeToString())
            wait_for(lambda: after in apply.calls, what="the message produced after the restart")
            wait_for(lambda: group_committed(settings) == 1, what="commit after the restart")
        assert apply.calls == [before, after]


def _apply_then_hang(settings: KafkaSettings, seen: multiprocessing.Queue[bytes]) -> None:
    """Child process: report the goal state, then never return, as if the host died mid-apply."""

    def apply(goal_state: DecodedGoalState) -> NoReturn:
        seen.put(goal_state.SerializeToString())
        while True:
            time.sleep(60)

    KafkaIntake(settings, apply).start()
    threading.Event().wait()


def test_crash_before_commit_redelivers(broker: KafkaBroker, settings: KafkaSettings) -> None:
    sent = goal_state_v2("port-crash")
    broker.produce(settings.topic, sent.SerializeToString())
    spawn = multiprocessing.get_context("spawn")
    seen: multiprocessing.Queue[bytes] = spawn.Queue()
    child = spawn.Process(target=_apply_then_hang, args=(settings, seen), daemon=True)
    child.start()
    try:
        try:
            first = seen.get(timeout=30)
        except queue.Empty:
            pytest.fail("the child intake never applied the goal state")
    finally:
        child.kill()
        child.join(10)
    assert pb.GoalStateV2.FromString(first) == sent
    assert group_committed(settings) == OFFSET_INVALID

    apply = RecordingApply()
    with running_intake(settings, apply):
        wait_for(lambda: group_committed(settings) == 1, what="commit after redelivery")
    assert apply.calls == [sent]
