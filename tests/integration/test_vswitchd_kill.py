"""ovs-vswitchd SIGKILLed while a 20,000-flow bundle (10,000 L2 neighbours) is in flight, then
started again: the agent's flows in OVS end as a fresh agent's for the same goal state, and the
statuses it answered were true (SUCCESS: the flows are there once it replayed; FAILURE or
PENDING: the controller's resend programs them and is answered SUCCESS).

Two deterministic moments: the bundle still unread in the switch's socket (ovs-vswitchd stopped
with SIGSTOP before the push, killed once the bytes queue up), and the switch busy parsing it
(killed once it spent CPU time on it since the push).
"""

from __future__ import annotations

import collections
import os
import pathlib
import signal
import threading
from collections.abc import Callable, Iterator

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from bench.common import context_states, neighbor_states
from tests.support.agent_host import scratch_sandbox, status_by_id
from tests.support.fresh_agent import fresh_agent_flows
from tests.support.parts import require_ovs
from tests.support.traffic import dump_flows

pytestmark = pytest.mark.integration
require_ovs()

HOST = "host1"
NEIGHBOURS = 10_000  # two flows each
UNREAD_BYTES = 64 * 1024  # of the bundle queued at the stopped switch before it is killed
BUSY_CPU_S = 0.03  # the switch's CPU time since the push before it is killed (~0.1 s in all)


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with scratch_sandbox() as sb:
        sb.host_up(HOST)
        yield sb


def _log(sb: Sandbox) -> str:
    return pathlib.Path(sb.host(HOST).log_file).read_text()


def _mgmt_unread(sb: Sandbox) -> int:
    """Bytes waiting in ovs-vswitchd's end of the agent's OpenFlow connection (`br-int.mgmt`)."""
    out = sb.exec(HOST, ["ss", "-xnH"]).stdout
    return sum(int(line.split()[2]) for line in out.splitlines() if line.split()[4].endswith("/br-int.mgmt"))


def _cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kill_while_unread(sb: Sandbox, pid: int) -> Callable[[], None]:
    os.kill(pid, signal.SIGSTOP)
    return lambda: wait_for(lambda: _mgmt_unread(sb) >= UNREAD_BYTES, 60, "the bundle to queue at the switch")


def _kill_while_busy(_sb: Sandbox, pid: int) -> Callable[[], None]:
    start = _cpu_s(pid)
    return lambda: wait_for(lambda: _cpu_s(pid) - start >= BUSY_CPU_S, 60, "the switch to work on the bundle")


@pytest.mark.parametrize("moment", [_kill_while_unread, _kill_while_busy], ids=["unread", "busy"])
def test_vswitchd_killed_mid_bundle_ends_consistent(
    box: Sandbox, moment: Callable[[Sandbox, int], Callable[[], None]]
) -> None:
    message = gs.goal_state_v2(*context_states(), *neighbor_states(0, NEIGHBOURS))
    ovs = box.ovs(HOST)
    pid = ovs.vswitchd_pid
    assert pid is not None
    replies: list[pb.GoalStateOperationReply | Exception] = []

    def push() -> None:
        try:
            replies.extend(box.push_message(HOST, message, timeout=90))
        except Exception as exc:  # reported below, with the agent's log
            replies.append(exc)

    wait_until_in_flight = moment(box, pid)
    pusher = threading.Thread(target=push, name="push-20k")
    pusher.start()
    try:
        wait_until_in_flight()
        replied_before_kill = not pusher.is_alive()
        ovs.stop_vswitchd(signal.SIGKILL)
        ovs.start_vswitchd()
    finally:
        pusher.join(120)
    assert not pusher.is_alive(), "no reply within 120 s"
    (reply,) = replies
    assert isinstance(reply, pb.GoalStateOperationReply), f"{reply!r}\n{_log(box)[-3000:]}"
    answered = status_by_id(reply)
    assert answered.keys() == {"vpc-bench", "subnet-bench"} | {f"nb-{i}" for i in range(NEIGHBOURS)}

    # The agent noticed the restart and replayed its desired state into the new switch.
    wait_for(lambda: "event=openflow_reconnected" in _log(box), 30, "the agent to reconnect")
    wait_for(
        lambda: _log(box).split("event=openflow_reconnected", 1)[1].count("event=resync ") >= 1,
        60,
        "the replay after the reconnect",
    )
    survived = dump_flows(box, HOST)

    resent: dict[str, str] = {}
    if set(answered.values()) != {"SUCCESS"}:  # the controller resends what did not succeed
        (again,) = box.push_message(HOST, message, timeout=90)
        resent = status_by_id(again)
        assert set(resent.values()) == {"SUCCESS"}, {s: n for s, n in resent.items() if n != "SUCCESS"}
        survived = dump_flows(box, HOST)

    fresh_reply, fresh = fresh_agent_flows(box, HOST, message)
    assert {s.operation_status for s in fresh_reply.operation_statuses} == {pb.SUCCESS}
    assert len(fresh) >= 2 * NEIGHBOURS
    missing, extra = sorted(set(fresh) - set(survived)), sorted(set(survived) - set(fresh))
    assert survived == fresh, (
        f"replied before the kill: {replied_before_kill}, first answer {sorted(set(answered.values()))}, "
        f"resend {sorted(set(resent.values()))}; missing {len(missing)}: {missing[:3]}, "
        f"extra {len(extra)}: {extra[:3]}"
    )


def test_vswitchd_killed_during_the_replay_after_its_restart(box: Sandbox) -> None:
    """The replay into a restarted switch is itself cut short by a second crash: the agent must
    replay again once the switch is back, not leave `br-int` (fail_mode=secure) empty."""
    message = gs.goal_state_v2(*context_states(), *neighbor_states(0, NEIGHBOURS))
    (reply,) = box.push_message(HOST, message, timeout=90)
    assert set(status_by_id(reply).values()) == {"SUCCESS"}
    before = dump_flows(box, HOST)
    ovs = box.ovs(HOST)
    ovs.restart_vswitchd()
    wait_for(lambda: "event=openflow_reconnected" in _log(box), 30, "the agent to reconnect")
    replay_done = "event=resync " in _log(box).split("event=openflow_reconnected", 1)[1]
    ovs.stop_vswitchd(signal.SIGKILL)
    ovs.start_vswitchd()
    assert not replay_done, "the replay was over before the second crash: nothing was tested"

    def whole() -> bool:
        return dump_flows(box, HOST) == before

    try:
        wait_for(whole, 60, "br-int to hold the agent's flows again")
    except TimeoutError:
        status = box.control(HOST, "status")
        raise AssertionError(
            f"br-int holds {len(dump_flows(box, HOST))} flows of {len(before)}; agent status "
            f"dataplane_ready={status['dataplane_ready']} flows_installed={status['flows_installed']}\n"
            + "\n".join(line for line in _log(box).splitlines()[-40:])
        ) from None
    assert box.control(HOST, "status")["dataplane_ready"] is True
    _reply, fresh = fresh_agent_flows(box, HOST, message)
    assert before == fresh


def test_vswitchd_stalled_past_the_bundle_timeout_answers_truly(box: Sandbox) -> None:
    """ovs-vswitchd frozen (SIGSTOP) with the bundle queued at it for longer than the agent waits
    for a reply (``--openflow-timeout``, 5 s here), then thawed. The outcome was unknown to the
    agent: it must not have answered SUCCESS without the flows, it resyncs by itself once the
    switch answers, and the controller's resend is then SUCCESS with the flows in OVS."""
    box.restart_agent(HOST, agent_args=["--openflow-timeout", "5"])
    message = gs.goal_state_v2(*context_states(), *neighbor_states(0, NEIGHBOURS))
    pid = box.ovs(HOST).vswitchd_pid
    assert pid is not None
    replies: list[pb.GoalStateOperationReply] = []
    pusher = threading.Thread(target=lambda: replies.extend(box.push_message(HOST, message, timeout=90)))
    os.kill(pid, signal.SIGSTOP)
    try:
        pusher.start()
        wait_for(lambda: _mgmt_unread(box) >= UNREAD_BYTES, 60, "the bundle to queue at the switch")
        pusher.join(90)  # the agent answers once it gave up waiting
        assert not pusher.is_alive(), "no answer while the switch is frozen"
    finally:
        os.kill(pid, signal.SIGCONT)
    (first,) = replies
    answered = status_by_id(first)
    first_tally = collections.Counter(answered.values())
    # At most the VPC and subnet (no flows of their own) may be SUCCESS: nothing was confirmed.
    assert first_tally["SUCCESS"] <= 2, f"SUCCESS for flows nobody confirmed: {dict(first_tally)}"
    # No resend needed for the agent to get back in line: its repair timer resyncs.
    wait_for(lambda: box.control(HOST, "status")["dataplane_ready"], 60, "the agent's own resync")
    (again,) = box.push_message(HOST, message, timeout=90)
    resent = status_by_id(again)
    survived = dump_flows(box, HOST)
    _reply, fresh = fresh_agent_flows(box, HOST, message)
    resend_tally = collections.Counter(resent.values())
    assert set(resent.values()) == {"SUCCESS"} and survived == fresh, (
        f"first answer {dict(first_tally)}, resend {dict(resend_tally)}: "
        f"br-int holds {len(survived)} flows, a fresh agent installs {len(fresh)}"
    )


def test_replay_that_fails_is_tried_again(box: Sandbox) -> None:
    """The replay into a restarted ovs-vswitchd fails while the OpenFlow connection stays up
    (ovsdb-server frozen while the agent sets flow-restore-wait); once ovsdb-server is back the
    agent must replay again instead of leaving `br-int` (fail_mode=secure) empty."""
    message = gs.goal_state_v2(*context_states(), *neighbor_states(0, 1_000))
    (reply,) = box.push_message(HOST, message, timeout=90)
    assert set(status_by_id(reply).values()) == {"SUCCESS"}
    before = dump_flows(box, HOST)
    ovs = box.ovs(HOST)
    agent_pid = box.host(HOST).agent_pid
    ovsdb_pid = int((ovs.rundir / "ovsdb-server.pid").read_text())
    assert agent_pid is not None
    os.kill(agent_pid, signal.SIGSTOP)  # the agent sees the restart only once it is whole
    try:
        ovs.restart_vswitchd()
        show = ["ovs-ofctl", "-O", "OpenFlow14", "show", "br-int"]
        wait_for(
            lambda: box.exec(HOST, show, check=False).returncode == 0, 30, "the restarted switch's br-int"
        )
        os.kill(ovsdb_pid, signal.SIGSTOP)
        try:
            os.kill(agent_pid, signal.SIGCONT)
            wait_for(lambda: "event=openflow_reconnected" in _log(box), 30, "the agent to reconnect")
            wait_for(lambda: "event=repair_failed" in _log(box), 60, "the replay to give up on ovsdb-server")
        finally:
            os.kill(ovsdb_pid, signal.SIGCONT)
    finally:
        os.kill(agent_pid, signal.SIGCONT)
    try:
        wait_for(lambda: dump_flows(box, HOST) == before, 30, "br-int to hold the agent's flows again")
    except TimeoutError:
        status = box.control(HOST, "status")
        failure = _log(box).split("event=repair_failed", 1)[1].splitlines()[:14]
        other_config = ovs.vsctl("get", "Open_vSwitch", ".", "other_config").strip()
        raise AssertionError(
            f"br-int holds {len(dump_flows(box, HOST))} flows of {len(before)}, 30 s after ovsdb-server "
            f"came back; agent status dataplane_ready={status['dataplane_ready']}, switch other_config "
            f"{other_config}; the replay failed with:\n" + "\n".join(failure)
        ) from None
    # The timed-out flow-restore-wait write may land once ovsdb-server thaws: the replay that
    # succeeded must have cleared it, or the next ovs-vswitchd start would wait forever.
    wait_for(
        lambda: "flow-restore-wait" not in ovs.vsctl("get", "Open_vSwitch", ".", "other_config"),
        30,
        "flow-restore-wait cleared",
    )
