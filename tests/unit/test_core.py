"""The core end to end without OVS: statuses, PENDING until bound, persistence, crash safety."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from agent.core import AgentCore, MessageResult
from agent.model.decode import Wire, decode_v2, decode_wire
from agent.model.resources import ResourceType, Status
from agent.model.state import DesiredState
from agent.model.store import Store
from agent.planner import cookies, overlay
from agent.planner.plan import Planner
from agent.reconciler.flows import FlowReconciler
from agent.sandbox import goalstates as gs
from agent.sandbox.poll import wait_for
from tests.support.recording_driver import RecordingDriver

HOST = "172.31.0.11"


@pytest.fixture
def core(tmp_path):
    state = DesiredState()
    driver = RecordingDriver()
    core = AgentCore(state, Store(tmp_path), Planner(state, HOST), FlowReconciler(driver))
    core.driver = driver  # type: ignore[attr-defined]
    core.start()
    core.call(core.resync).result(5)
    core.call(lambda: core.set_tunnel(9)).result(5)
    yield core
    core.stop()


def _send(core: AgentCore, *states) -> MessageResult:
    """As the gRPC intake does: decode, and hand over the bytes for the journal."""
    wire = Wire(2, gs.goal_state_v2(*states, host_ip=HOST).SerializeToString(), HOST)
    return core.apply(decode_wire(wire), "test", wire, timeout=5)


def _push(core: AgentCore, *states) -> dict[str, Status]:
    return {s.resource_id: s.status for s in _send(core, *states).statuses}


BASE = (gs.vpc("v1", 100), gs.subnet("s1", "v1", "10.0.1.0/24", 100))


def test_port_pending_until_bound_then_programmed(core: AgentCore) -> None:
    assert _push(core, *BASE, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05")) == {
        "v1": Status.SUCCESS,
        "p1": Status.PENDING,
    }
    core.call(lambda: core.set_interfaces([("vm1", "p1", 4, 0)])).result(5)
    cookies = {f.cookie for f in core.driver.table.values()}  # type: ignore[attr-defined]
    assert any(f.match and f.match[0].value == 4 for f in core.driver.table.values())  # type: ignore[attr-defined]
    assert len(cookies) >= 3  # base, port, segment
    # The same CREATE again: SUCCESS (bound now), nothing re-sent.
    bundles = len(core.driver.bundles)  # type: ignore[attr-defined]
    assert (
        _push(core, *BASE, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05"))["p1"] is Status.SUCCESS
    )
    assert len(core.driver.bundles) == bundles  # type: ignore[attr-defined]


def test_statuses_carry_timings_and_empty_message_is_answered(core: AgentCore) -> None:
    result = _send(core)
    assert result.statuses == [] and result.total_us >= 0
    result = _send(core, *BASE, gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12"))
    nb = next(s for s in result.statuses if s.resource_id == "n1")
    assert nb.status is Status.SUCCESS and nb.resource_type is ResourceType.NEIGHBOR
    assert nb.elapsed_us > 0 and nb.config_us > 0 and nb.dataplane_us > 0


def test_journaled_before_reply_and_folded_into_rows_once_idle(core: AgentCore, tmp_path) -> None:
    before, after = threading.Event(), threading.Event()
    core.call(before.wait)  # the worker busy until the goal state and a later task are queued
    fut = core.submit(*_decoded(*BASE, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05")))
    core.call(after.wait)  # queued behind it: the worker is not idle after the goal state
    before.set()
    fut.result(5)
    store = Store(tmp_path)
    assert [w.version for _seq, w in store.journaled()] == [2]  # durable at reply time, as received
    assert store.load()[ResourceType.PORT] == {}  # rows not written on the reply's path
    after.set()
    wait_for(lambda: store.journaled() == [], 5.0, "the idle worker to fold the journal")
    assert set(store.load()[ResourceType.PORT]) == {"p1"}


def _decoded(*states) -> tuple:
    wire = Wire(2, gs.goal_state_v2(*states, host_ip=HOST).SerializeToString(), HOST)
    return decode_wire(wire), "test", wire


def test_a_crashing_handler_is_failure_not_death(core: AgentCore, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_requests):
        raise RuntimeError("planner bug")

    monkeypatch.setattr(core.state, "apply", boom)
    assert _push(core, gs.vpc("v2", 200)) == {"v2": Status.FAILURE}
    monkeypatch.undo()
    assert _push(core, gs.vpc("v2", 200)) == {"v2": Status.SUCCESS}


def test_rejected_flows_fail_that_resource_only(core: AgentCore) -> None:
    _push(core, *BASE)
    bad = gs.neighbor("bad", "v1", "s1", "10.0.1.9", "fa:16:3e:00:00:09", "172.31.0.12")
    (request,) = decode_v2(gs.goal_state_v2(bad, host_ip=HOST), HOST)
    for flow in overlay.neighbor_flows(request.resource, [(100, "10.0.1.9")], 9):
        core.driver.reject.add(flow.key)  # type: ignore[attr-defined]
    statuses = _push(
        core, bad, gs.neighbor("good", "v1", "s1", "10.0.1.10", "fa:16:3e:00:00:0a", "172.31.0.12")
    )
    assert statuses == {"bad": Status.FAILURE, "good": Status.SUCCESS}


NB = gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12")


def _flows_of(core: AgentCore, nb_id: str) -> int:
    ck = cookies.cookie(cookies.Kind.NEIGHBOR, nb_id)
    return sum(1 for f in core.driver.table.values() if f.cookie == ck)  # type: ignore[attr-defined]


def test_journal_failure_leaves_nothing_held_and_the_resend_is_programmed(
    core: AgentCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _push(core, *BASE)

    def disk_full(_wire):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(core.store, "journal", disk_full)
    result = _send(core, NB)
    assert [(s.resource_id, s.status) for s in result.statuses] == [("n1", Status.FAILURE)]
    assert "not stored" in result.statuses[0].reason and result.retry
    assert "n1" not in core.state.neighbors and _flows_of(core, "n1") == 0
    monkeypatch.undo()
    result = _send(core, NB)  # the controller's resend: a change again, programmed
    assert [(s.resource_id, s.status) for s in result.statuses] == [("n1", Status.SUCCESS)]
    assert not result.retry and _flows_of(core, "n1") > 0


def test_a_planning_error_fails_its_owner_only_and_a_resend_retries_it(
    core: AgentCore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _push(core, *BASE)
    real = core.planner.flows

    def flows(owner):
        if owner == (cookies.Kind.NEIGHBOR, "bad"):
            raise ValueError("planner bug")
        return real(owner)

    monkeypatch.setattr(core.planner, "flows", flows)
    bad = gs.neighbor("bad", "v1", "s1", "10.0.1.9", "fa:16:3e:00:00:09", "172.31.0.12")
    assert _push(core, bad, NB) == {"bad": Status.FAILURE, "n1": Status.SUCCESS}
    assert (cookies.Kind.NEIGHBOR, "bad") in core.failed and _flows_of(core, "n1") > 0
    # A resync (start, reconnect) plans every owner: the bad one fails alone, nothing raises.
    core.call(core.resync).result(5)
    assert core.dataplane_ready and set(core.failed) == {(cookies.Kind.NEIGHBOR, "bad")}
    assert _flows_of(core, "n1") > 0
    monkeypatch.undo()
    # The same goal state again is "unchanged", but its owner failed: it is programmed now.
    assert _push(core, bad) == {"bad": Status.SUCCESS}
    assert _flows_of(core, "bad") > 0 and not core.failed


def test_a_bundle_timeout_is_an_unknown_outcome_resolved_by_a_resync(core: AgentCore) -> None:
    _push(core, *BASE)
    core.driver.faults.append(TimeoutError("no reply from the switch in time"))  # type: ignore[attr-defined]
    # The bundle timed out; the core dumps, diffs and resyncs before it answers.
    assert _push(core, NB) == {"n1": Status.SUCCESS}
    assert core.dataplane_ready and _flows_of(core, "n1") > 0
    assert core.reconciler.installed == core.driver.table  # type: ignore[attr-defined]


def test_switch_away_answers_pending_and_the_repair_timer_programs_it(core: AgentCore) -> None:
    _push(core, *BASE)
    gone = ConnectionError("not connected")
    core.driver.faults.extend([gone, gone])  # type: ignore[attr-defined]  # the bundle, then the first resync
    assert _push(core, NB) == {"n1": Status.PENDING}
    assert not core.dataplane_ready and core.repair_in_s is not None
    wait_for(lambda: core.dataplane_ready, 10.0, "the repair timer to resync")
    assert _flows_of(core, "n1") > 0
    # A DELETE while the switch is away is PENDING too (its flows are still there), then done.
    core.driver.faults.extend([gone, gone])  # type: ignore[attr-defined]
    result = _send(
        core, gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12", op=gs.DELETE)
    )
    assert [s.status for s in result.statuses] == [Status.PENDING]
    wait_for(lambda: core.dataplane_ready, 10.0, "the repair timer to resync")
    assert _flows_of(core, "n1") == 0


def test_rejected_owner_is_retried_by_the_repair_timer(core: AgentCore) -> None:
    _push(core, *BASE)
    bad = gs.neighbor("bad", "v1", "s1", "10.0.1.9", "fa:16:3e:00:00:09", "172.31.0.12")
    (request,) = decode_v2(gs.goal_state_v2(bad, host_ip=HOST), HOST)
    keys = {f.key for f in overlay.neighbor_flows(request.resource, [(100, "10.0.1.9")], 9)}
    core.driver.reject |= keys  # type: ignore[attr-defined]
    assert _push(core, bad) == {"bad": Status.FAILURE}
    core.driver.reject -= keys  # type: ignore[attr-defined]  # the switch takes it now
    wait_for(lambda: not core.failed, 10.0, "the repair timer to re-program the failed owner")
    assert _flows_of(core, "bad") > 0


def test_after_a_quarantine_unknown_flows_stay_until_the_sweep(core: AgentCore) -> None:
    _push(core, *BASE, NB)
    lost = dict(core.driver.table)  # type: ignore[attr-defined]  # what the quarantined state had
    fresh = DesiredState()
    core.state.resources = fresh.resources  # the store started empty
    core.strays_kept_until = time.monotonic() + 0.5
    core.call(core.resync).result(5)
    assert core.driver.table.keys() >= lost.keys()  # type: ignore[attr-defined]  # VMs keep forwarding
    wait_for(lambda: _flows_of(core, "n1") == 0, 10, "the sweep once the grace is over")
    assert core.reconciler.installed == core.driver.table  # type: ignore[attr-defined]


def test_security_group_success_only_once_its_ports_flows_are_confirmed(core: AgentCore) -> None:
    """A group's status covers the flows of every bound port using it: a port still waiting for
    its interface does not hold the group back; a rule flow OVS refuses makes it FAILURE, and
    the resend once OVS takes it SUCCESS."""
    from agent.model.resources import SecurityGroupRule
    from agent.planner import security

    rule = gs.sg_rule("r1", gs.INGRESS, gs.TCP, (22, 22))
    port = gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", groups=["g1"])
    assert _push(core, *BASE, gs.security_group("g1", [rule]), port) == {
        "v1": Status.SUCCESS,
        "g1": Status.SUCCESS,
        "p1": Status.PENDING,
    }
    core.call(lambda: core.set_interfaces([("vm1", "p1", 4, 0)])).result(5)
    owned = [f for f in core.driver.table.values() if f.cookie == security.rule_cookie("p1", "r1")]  # type: ignore[attr-defined]
    assert len(owned) == 1
    refused = gs.sg_rule("r2", gs.INGRESS, gs.UDP, (53, 53))
    as_held = SecurityGroupRule(
        "r2", direction=1, ethertype=0, protocol=1, port_range_min=53, port_range_max=53
    )
    slot = core.planner.security.slots["g1"]
    core.driver.reject.add(security.rule_flows("p1", 4, as_held, slot, None)[0].key)  # type: ignore[attr-defined]
    statuses = _push(core, *BASE, gs.security_group("g1", [rule, refused], gs.UPDATE, 2))
    assert statuses["g1"] is Status.FAILURE
    core.driver.reject.clear()  # type: ignore[attr-defined]
    assert _push(core, *BASE, gs.security_group("g1", [rule, refused], gs.UPDATE, 2))["g1"] is Status.SUCCESS
