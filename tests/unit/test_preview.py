"""`acactl plan` through the control socket's handler on a real core (in-memory switch): the
plan leaves the core exactly as it was, and lists exactly the flows the real push then sends."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest

from agent.cli.acactl import read_goal_state
from agent.control import handle
from agent.core import AgentCore
from agent.model.decode import Wire, decode_wire
from agent.model.state import DesiredState
from agent.model.store import Store
from agent.planner.pipeline import TABLE_NAMES
from agent.planner.plan import Planner
from agent.reconciler.flows import FlowReconciler
from agent.sandbox import goalstates as gs
from tests.support.recording_driver import RecordingDriver

HOST, PEER = "172.31.0.11", "172.31.0.12"
GW = ("10.0.1.1", "fa:16:3e:aa:00:01")
CONTEXT = (
    gs.vpc("v1", 100, "10.0.0.0/16", op=gs.INFO),
    gs.subnet("s1", "v1", "10.0.1.0/24", 100, *GW),
    gs.subnet("s2", "v1", "10.0.2.0/24", 200, "10.0.2.1", "fa:16:3e:aa:00:02"),
)
WEB = gs.security_group("sg-web", [gs.sg_rule("in-80", gs.INGRESS, gs.TCP, (80, 80))])


@pytest.fixture
def core(tmp_path: Any) -> Any:
    state = DesiredState()
    driver = RecordingDriver()
    core = AgentCore(state, Store(tmp_path), Planner(state, HOST), FlowReconciler(driver))
    core.start()
    core.call(core.resync).result(5)
    core.call(lambda: core.set_tunnel(9)).result(5)
    core.call(lambda: core.set_interfaces([("vm1", "p1", 4, 0), ("vm2", "p2", 5, 0)])).result(5)
    _push(
        core,
        gs.vpc("v1", 100, "10.0.0.0/16"),
        *CONTEXT[1:],
        WEB,
        gs.router("r1", "fe:16:11:00:00:01", ["s1", "s2"]),
        gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", groups=["sg-web"]),
        gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", PEER),
        gs.neighbor("n2", "v1", "s2", "10.0.2.7", "fa:16:3e:00:00:07", PEER),
    )
    yield core
    core.stop()


def _message(*states: Any) -> bytes:
    return gs.goal_state_v2(*states, host_ip=HOST).SerializeToString()


def _push(core: AgentCore, *states: Any) -> None:
    wire = Wire(2, _message(*states), HOST)
    core.apply(decode_wire(wire), "test", wire, timeout=5)


def _plan(core: AgentCore, *states: Any) -> dict[str, Any]:
    request = {"what": "plan", "version": 2, "message": base64.b64encode(_message(*states)).decode()}
    return handle(core, request, {"underlay_ip": HOST})


def _held(core: AgentCore) -> Any:
    """Everything the core holds that a plan could touch, comparable."""

    def snapshot() -> Any:
        planner = core.planner
        owners = sorted(core.reconciler.desired)
        return (
            copy.deepcopy(core.state.resources),
            dict(core.state.tombstones),
            dict(core.reconciler.installed),
            {o: dict(fs) for o, fs in core.reconciler.desired.items()},
            dict(planner.bindings),
            dict(planner.route_vlans),
            {o: planner.flows(o) for o in owners},
        )

    return core.call(snapshot).result(5)


def _texts(flows: Any) -> list[str]:
    return sorted(f.text(TABLE_NAMES) for f in flows)


def test_plan_of_a_changed_context_subnet_lists_exactly_the_bundle(core: AgentCore) -> None:
    """A subnet sent as context (INFO) with a new gateway MAC: nothing acted on, yet its router,
    ports and neighbours are re-planned, as the push then does."""
    moved = gs.subnet("s1", "v1", "10.0.1.0/24", 100, GW[0], "fa:16:3e:aa:00:99", revision=2)
    plan = _plan(core, CONTEXT[0], moved)
    assert plan["resources"] == []
    driver: RecordingDriver = core.reconciler.driver  # type: ignore[assignment]
    sent = len(driver.bundles)
    _push(core, CONTEXT[0], moved)
    ((deletes, adds),) = driver.bundles[sent:]
    assert sorted(r["flow"] for r in plan["added"] + plan["changed"]) == _texts(adds)
    assert sorted(r["flow"] for r in plan["removed"]) == _texts(deletes)
    assert any("fa:16:3e:aa:00:99" in r["flow"] for r in plan["added"] + plan["changed"])


def test_plan_changes_nothing_and_lists_exactly_the_bundle(core: AgentCore) -> None:
    change = (
        *CONTEXT,
        WEB,
        gs.port("p2", "v1", "s2", "10.0.2.8", "fa:16:3e:00:00:08", groups=["sg-web"]),
        gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", PEER, op=gs.DELETE, revision=2),
    )
    before = _held(core)
    plan = _plan(core, *change)
    assert _held(core) == before
    assert _plan(core, *change) == plan  # and again: the first left nothing behind

    statuses = {(r["type"], r["id"]): r["status"] for r in plan["resources"]}
    assert statuses == {
        ("securitygroup", "sg-web"): "SUCCESS",  # resent unchanged
        ("port", "p2"): "SUCCESS",
        ("neighbor", "n1"): "SUCCESS",
    }
    assert "neighbor:n1" in next(r["owners"] for r in plan["resources"] if r["id"] == "n1")

    driver: RecordingDriver = core.reconciler.driver  # type: ignore[assignment]
    sent = len(driver.bundles)
    _push(core, *change)
    ((deletes, adds),) = driver.bundles[sent:]
    assert sorted(r["flow"] for r in plan["added"] + plan["changed"]) == _texts(adds)
    assert sorted(r["flow"] for r in plan["removed"]) == _texts(deletes)
    assert plan["added"] and plan["changed"] and plan["removed"]


def test_plan_says_what_would_be_refused_or_pending(core: AgentCore) -> None:
    plan = _plan(
        core,
        *CONTEXT,
        gs.port("p3", "v1", "s1", "10.0.1.9", "fa:16:3e:00:00:09"),  # no interface yet
        gs.port("p4", "v1", "s1", "10.0.9.9", "fa:16:3e:00:00:0a"),  # outside its subnet
        gs.neighbor("n3", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:0b", PEER),  # n1's address
    )
    rows = {r["id"]: r for r in plan["resources"]}
    assert rows["p3"]["status"] == "PENDING" and rows["p3"]["owners"]
    assert rows["p4"]["status"] == "INVALID_ARG" and "outside subnet" in rows["p4"]["reason"]
    assert rows["n3"]["status"] == "INVALID_ARG" and "neighbor n1" in rows["n3"]["reason"]
    assert not any(r["owner"] == "port:p3" for r in plan["added"])  # unbound: no flows yet


def test_plan_of_a_v1_goal_state_read_from_a_binary_file(core: AgentCore, tmp_path: Any) -> None:
    """acactl's reader takes binary protobuf (or JSON); a V1 goal state is planned like a V2."""
    msg = gs.goal_state_v1(*CONTEXT, gs.port("p2", "v1", "s2", "10.0.2.8", "fa:16:3e:00:00:08"))
    path = tmp_path / "gs.bin"
    path.write_bytes(msg.SerializeToString())
    version, raw = read_goal_state(str(path), v1=True)
    plan = handle(core, {"what": "plan", "version": version, "message": base64.b64encode(raw).decode()}, {})
    assert {r["id"]: r["status"] for r in plan["resources"]} == {"p2": "SUCCESS"}
    assert {r["owner"] for r in plan["added"]} >= {"port:p2"}
