"""The metrics' logic without OVS: listen addresses, goal-state outcomes, librdkafka's lag, and
what a scrape reads from a core driven by goal states (the HTTP scrape against a real agent is
tests/integration/test_metrics_health.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from agent.core import AgentCore, MessageResult, ResourceStatus
from agent.intake.kafka_consumer import consumer_lag
from agent.metrics import AgentMetrics, outcome, parse_listen
from agent.model.decode import Wire, decode_wire
from agent.model.resources import Op, ResourceType, Status
from agent.model.state import DesiredState
from agent.model.store import Store
from agent.planner.plan import Planner
from agent.reconciler.flows import FlowReconciler
from agent.sandbox import goalstates as gs
from tests.support.recording_driver import RecordingDriver

HOST = "172.31.0.11"
BASE = (gs.vpc("v1", 100), gs.subnet("s1", "v1", "10.0.1.0/24", 100))


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("9464", ("127.0.0.1", 9464)),
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_a_bare_port_listens_on_loopback_and_an_address_as_written(listen: str, expected: tuple) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["", "host:", ":9464", "9464x", "127.0.0.1:70000", "127.0.0.1:0"])
def test_a_listen_address_that_is_not_one_is_refused(listen: str) -> None:
    with pytest.raises(ValueError, match=r"\[metrics\] listen"):
        parse_listen(listen)


def _status(status: Status) -> ResourceStatus:
    return ResourceStatus("r", ResourceType.PORT, Op.CREATE, status)


def test_a_goal_states_outcome_is_its_most_severe_status() -> None:
    assert outcome(MessageResult([])) == "success"
    assert outcome(MessageResult([_status(Status.SUCCESS), _status(Status.PENDING)])) == "pending"
    assert (
        outcome(MessageResult([_status(Status.OUT_OF_ORDER), _status(Status.INVALID_ARG)])) == "invalid_arg"
    )
    assert outcome(MessageResult([_status(Status.INVALID_ARG), _status(Status.FAILURE)])) == "failure"
    assert outcome(MessageResult([_status(Status.FAILURE)], retry=True)) == "not_stored"
    assert outcome(MessageResult([_status(Status.FAILURE)], retry=True, crashed=True)) == "crashed"


def test_consumer_lag_is_read_per_assigned_partition_from_librdkafka_statistics() -> None:
    topics = {
        "host-h1": {
            "partitions": {
                "0": {"consumer_lag": 7},
                "1": {"consumer_lag": -1},  # not known yet
                "-1": {"consumer_lag": 0},  # librdkafka's internal partition
            }
        },
        "other": {"partitions": {"3": {"consumer_lag": 0}}},
    }
    assert consumer_lag(topics) == {("host-h1", 0): 7, ("other", 3): 0}


@pytest.fixture
def core(tmp_path) -> Iterator[AgentCore]:
    state = DesiredState()
    core = AgentCore(state, Store(tmp_path), Planner(state, HOST), FlowReconciler(RecordingDriver()))
    core.start()
    core.call(core.resync).result(5)
    core.call(lambda: core.set_tunnel(9)).result(5)
    yield core
    core.stop()


def _scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _send(core: AgentCore, *states) -> MessageResult:
    wire = Wire(2, gs.goal_state_v2(*states, host_ip=HOST).SerializeToString(), HOST)
    return core.apply(decode_wire(wire), "test", wire, timeout=5)


def test_a_scrape_counts_goal_states_statuses_timings_and_the_flow_mirror(core: AgentCore) -> None:
    metrics = AgentMetrics(core)
    core.on_goal_state = metrics.observe_goal_state
    _send(core, *BASE, gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12"))
    _send(core, *BASE, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05"))  # PENDING: not bound
    got = _scrape(metrics.registry)
    assert got[("aca_goal_states_total", (("outcome", "success"), ("source", "test")))] == 1
    assert got[("aca_goal_states_total", (("outcome", "pending"), ("source", "test")))] == 1
    assert got[("aca_resource_statuses_total", (("status", "SUCCESS"), ("type", "NEIGHBOR")))] == 1
    assert got[("aca_resource_statuses_total", (("status", "PENDING"), ("type", "PORT")))] == 1
    assert got[("aca_resource_statuses_total", (("status", "SUCCESS"), ("type", "VPC")))] == 2
    for phase in ("config", "dataplane", "total"):
        assert got[("aca_goal_state_duration_seconds_count", (("phase", phase),))] == 2
    assert got[("aca_ports_pending", ())] == 1
    assert got[("aca_dataplane_ready", ())] == 1
    assert got[("aca_owners_failed", ())] == 0
    by_table = {labels[0][1]: v for (name, labels), v in got.items() if name == "aca_flows_installed"}
    by_kind = {
        labels[0][1]: v for (name, labels), v in got.items() if name == "aca_flows_installed_by_owner_kind"
    }
    assert sum(by_table.values()) == sum(by_kind.values()) == len(core.reconciler.installed)
    assert by_table["L2_LOOKUP"] >= 1 and by_kind["neighbor"] >= 1
    assert got[("process_resident_memory_bytes", ())] > 0
