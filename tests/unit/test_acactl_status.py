"""`acactl status`, `plan` and `set-log-level` through a real control socket on a real core
(in-memory switch): the exit code says whether the agent is ready with every owner programmed,
and whether a goal state would be accepted."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from google.protobuf import json_format

from agent.cli import acactl
from agent.control import ControlServer
from agent.core import AgentCore
from agent.model.decode import Wire, decode_wire
from agent.model.state import DesiredState
from agent.model.store import Store
from agent.planner import overlay
from agent.planner.plan import Planner
from agent.reconciler.flows import FlowReconciler
from agent.sandbox import goalstates as gs
from tests.support.recording_driver import RecordingDriver

HOST = "172.31.0.11"


@pytest.fixture
def agent(tmp_path: Any) -> Any:
    state = DesiredState()
    driver = RecordingDriver()
    core = AgentCore(state, Store(tmp_path), Planner(state, HOST), FlowReconciler(driver))
    core.start()
    server = ControlServer(
        str(tmp_path / "ctl.sock"), core, {"host_id": "h1", "underlay_ip": HOST, "bridge": "br-int"}
    )
    server.start()
    yield core, driver, str(server.path)
    server.stop()
    core.stop()


def test_status_exit_code_follows_readiness_and_failed_owners(agent: Any, capsys: Any) -> None:
    core, driver, sock = agent
    assert acactl.main(["--socket", sock, "status"]) == acactl.NOT_OK  # OVS never connected
    assert capsys.readouterr().out.startswith("h1 (172.31.0.11, bridge br-int): NOT READY")

    core.call(core.resync).result(5)
    core.call(lambda: core.set_tunnel(9)).result(5)
    assert acactl.main(["--socket", sock, "status"]) == 0
    assert "): ready" in capsys.readouterr().out

    bad = gs.neighbor("bad", "v1", "s1", "10.0.1.9", "fa:16:3e:00:00:09", "172.31.0.12")
    msg = gs.goal_state_v2(gs.vpc("v1", 100), gs.subnet("s1", "v1", "10.0.1.0/24", 100), bad, host_ip=HOST)
    (_vpc, _subnet, request) = decode_wire(Wire(2, msg.SerializeToString(), HOST))
    driver.reject |= {f.key for f in overlay.neighbor_flows(request.resource, [(100, "10.0.1.9")], 9)}
    wire = Wire(2, msg.SerializeToString(), HOST)
    core.apply(decode_wire(wire), "test", wire, timeout=5)
    assert acactl.main(["--socket", sock, "status"]) == acactl.NOT_OK
    out = capsys.readouterr().out
    assert "DEGRADED" in out and "owners failed: 1" in out and "failed neighbor:bad: " in out
    assert acactl.main(["--socket", sock, "--json", "status"]) == acactl.NOT_OK


def test_set_log_level_applies_at_once_and_refuses_unknown_levels(agent: Any, capsys: Any) -> None:
    _core, _driver, sock = agent
    loggers = (logging.getLogger(), logging.getLogger("aca"))
    levels = [lg.level for lg in loggers]
    try:
        assert acactl.main(["--socket", sock, "set-log-level", "debug"]) == 0
        assert logging.getLogger("aca").level == logging.DEBUG
        assert acactl.main(["--socket", sock, "set-log-level", "error"]) == 0
        assert logging.getLogger("aca").level == logging.ERROR
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    with pytest.raises(RuntimeError, match="unknown log level 'loud'"):
        acactl.request(sock, "set_log_level", level="loud")


def test_plan_exit_code_says_whether_the_goal_state_would_be_accepted(
    agent: Any, tmp_path: Any, capsys: Any
) -> None:
    _core, _driver, sock = agent
    context = (gs.vpc("v1", 100), gs.subnet("s1", "v1", "10.0.1.0/24", 100))
    good = gs.goal_state_v2(
        *context, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05"), host_ip=HOST
    )
    bad = gs.goal_state_v2(*context, gs.port("p2", "v1", "s1", "10.0.9.5", "fa:16:3e:00:00:06"), host_ip=HOST)
    for msg, expected in ((good, 0), (bad, acactl.NOT_OK)):
        path = tmp_path / "gs.json"
        path.write_text(json_format.MessageToJson(msg))
        assert acactl.main(["--socket", sock, "plan", str(path)]) == expected
    assert "outside subnet s1" in capsys.readouterr().out
