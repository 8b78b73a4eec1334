"""The core's goal-state budget: pushes beyond it are refused and counted, Kafka waits for room
ahead of them, one goal state always fits an empty core, internal work is never refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agent.core import AgentCore, CoreBusy
from agent.model.state import DesiredState
from agent.model.store import Store
from agent.planner.plan import Planner
from agent.reconciler.flows import FlowReconciler
from agent.sandbox.poll import wait_for
from tests.support.recording_driver import RecordingDriver

LIMIT = 1000


@pytest.fixture
def core(tmp_path) -> Iterator[AgentCore]:
    state = DesiredState()
    core = AgentCore(
        state,
        Store(tmp_path),
        Planner(state, "172.31.0.11"),
        FlowReconciler(RecordingDriver()),
        queue_limit_bytes=LIMIT,
    )
    core.start()
    yield core
    core.stop()


def test_a_push_beyond_the_budget_is_refused_and_counted_until_room_is_freed(core: AgentCore) -> None:
    first = core.admit(600, "grpc-v2")
    second = core.admit(400, "grpc-v2")  # exactly the limit
    with pytest.raises(CoreBusy, match=f"1000 of {LIMIT} bytes"):
        core.admit(1, "grpc-v2")
    assert core.counters["goal_states_refused_busy"] == 1
    with first:
        pass  # answered: its bytes are free again
    with core.admit(600, "grpc-v1"), pytest.raises(CoreBusy):
        core.admit(1, "grpc-v1")
    second.close()
    assert core.counters["goal_states_refused_busy"] == 2
    with core.admit(LIMIT, "grpc-v1"):
        pass


def test_one_goal_state_larger_than_the_budget_goes_through_an_empty_core(core: AgentCore) -> None:
    with core.admit(5 * LIMIT, "grpc-v2"), pytest.raises(CoreBusy):
        core.admit(1, "grpc-v2")
    with core.admit(1, "grpc-v2"):
        pass


def test_kafka_waits_for_room_and_no_push_overtakes_it(core: AgentCore) -> None:
    held = core.admit(LIMIT - 5, "grpc-v2")
    admitted = threading.Event()

    def kafka() -> None:
        with core.admit(10, "kafka", wait=True):
            admitted.set()

    thread = threading.Thread(target=kafka)
    thread.start()
    wait_for(lambda: core._admission._waiting == 1, timeout=5, what="kafka waiting for room")
    assert not admitted.is_set()
    with pytest.raises(CoreBusy):
        core.admit(1, "grpc-v2")  # it would fit, but Kafka is first in line
    held.close()
    thread.join(5)
    assert admitted.is_set() and not thread.is_alive()
    with core.admit(LIMIT, "grpc-v2"):
        pass


def test_internal_work_runs_while_the_budget_is_full(core: AgentCore) -> None:
    with core.admit(LIMIT, "grpc-v2"):
        assert core.call(lambda: "resync ran").result(5) == "resync ran"
        core.call(core.repair_now).result(5)
