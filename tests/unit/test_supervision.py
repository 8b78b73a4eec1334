"""The supervisor with real threads: restarts with backoff, fatal deaths, stalled heartbeats, and
the watchdog pinged by ``Agent.run`` only while every thread is healthy."""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from agent.daemon import Agent
from agent.logs import LogfmtFormatter
from agent.sandbox.poll import wait_for
from agent.supervision import Heartbeat, Supervisor


def fake_agent(stop_event: threading.Event, sup: Supervisor) -> SimpleNamespace:
    """What ``Agent.run`` reads: the stop event, the supervisor, what the health status needs."""
    return SimpleNamespace(
        stop_event=stop_event,
        supervisor=sup,
        ready=True,
        core=SimpleNamespace(dataplane_ready=True),
        _set_serving=lambda serving: None,
    )


class Flaky:
    """A loop that raises its first ``failures`` runs, then beats until told to stop."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0
        self.stop = threading.Event()

    def __call__(self, heartbeat: Heartbeat) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"boom {self.runs}")
        while not self.stop.wait(0.01):
            heartbeat.beat()


class Beating:
    """A thread its owner runs (watched, not spawned), beating until paused or told to end."""

    def __init__(self, name: str) -> None:
        self.last = 0.0
        self.paused = threading.Event()
        self.end = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        import time

        while not self.end.wait(0.01):
            if self.error is not None:
                raise self.error
            if not self.paused.is_set():
                self.last = time.monotonic()


@pytest.fixture
def watched() -> Iterator[Beating]:
    beating = Beating(f"test-watched-{os.getpid()}")
    beating.thread.start()
    wait_for(lambda: beating.last > 0, what="the first beat")
    yield beating
    beating.end.set()
    beating.thread.join(5)


def thread_died_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """As the agent writes them (logfmt values)."""
    lines = [LogfmtFormatter().message(r) for r in caplog.records]
    return [line for line in lines if line.startswith("event=thread_died ")]


def test_a_loop_that_raises_is_restarted_with_a_doubling_capped_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "aca.supervision")
    fatal = threading.Event()
    sup = Supervisor(on_fatal=fatal.set, backoff_min=0.05, backoff_max=0.2)
    loop = Flaky(failures=4)
    thread = sup.spawn("flaky", loop, restart=True, stall_after=5.0)
    wait_for(lambda: loop.runs == 5 and sup.check(), what="the fifth run, healthy")
    assert sup.states() == {"flaky": "running"}
    lines = thread_died_lines(caplog)
    delays = [float(re.search(r"restart_in_s=(\S+)", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert delays == [0.05, 0.1, 0.2, 0.2]
    assert all("name=flaky" in line and "action=restart" in line for line in lines)
    assert "error=\"RuntimeError('boom 4')\"" in lines[-1]
    assert sup.errors() == {"flaky": "RuntimeError('boom 4')"}
    assert not fatal.is_set() and sup.fatal is None
    sup.stop()
    loop.stop.set()
    thread.join(5)
    assert sup.states() == {"flaky": "stopped"}


def test_a_loop_that_may_not_restart_is_fatal_once(caplog: pytest.LogCaptureFixture) -> None:
    fatal = threading.Event()
    sup = Supervisor(on_fatal=fatal.set)
    thread = sup.spawn("once", Flaky(failures=1), restart=False)
    thread.join(5)
    assert fatal.is_set()
    assert sup.fatal == "once: RuntimeError('boom 1')"
    assert sup.states() == {"once": "dead"}
    assert not sup.check()
    assert thread_died_lines(caplog) == [
        "event=thread_died name=once error=\"RuntimeError('boom 1')\" action=exit"
    ]


def test_no_restart_and_no_death_once_stopping() -> None:
    fatal = threading.Event()
    sup = Supervisor(on_fatal=fatal.set)
    sup.stop()
    sup.spawn("late", Flaky(failures=1), restart=True).join(5)
    assert sup.states() == {"late": "stopped"}
    assert not fatal.is_set()


def test_a_loop_that_returns_has_stopped() -> None:
    sup = Supervisor()
    sup.spawn("done", lambda _hb: None, restart=True).join(5)
    assert sup.states() == {"done": "stopped"}
    assert not sup.check()
    assert sup.fatal is None


def test_a_stalled_heartbeat_is_unhealthy_until_it_beats_again(
    watched: Beating, caplog: pytest.LogCaptureFixture
) -> None:
    sup = Supervisor()
    sup.watch(
        "beating",
        thread_name=watched.thread.name,
        progress=lambda: watched.last,
        stall_after=0.2,
    )
    assert sup.check()
    watched.paused.set()
    wait_for(lambda: not sup.check(), what="the stall to be seen")
    assert sup.states() == {"beating": "stalled"}
    assert any(r.getMessage().startswith("event=thread_stalled name=beating") for r in caplog.records)
    watched.paused.clear()
    wait_for(sup.check, what="the heartbeat to count again")
    assert sup.states() == {"beating": "running"}
    assert sup.fatal is None


def test_a_watched_thread_that_raises_is_fatal_with_its_error(watched: Beating) -> None:
    fatal = threading.Event()
    sup = Supervisor(on_fatal=fatal.set)
    sup.watch("beating", thread_name=watched.thread.name)
    previous = threading.excepthook
    sup.install_excepthook()
    try:
        watched.error = OSError("socket gone")
        watched.thread.join(5)
    finally:
        threading.excepthook = previous
    assert fatal.is_set()
    assert sup.fatal == "beating: OSError('socket gone')"
    assert not sup.check()
    assert sup.states() == {"beating": "dead"}


def test_a_watched_thread_that_just_ends_is_fatal_at_the_next_check(watched: Beating) -> None:
    sup = Supervisor()
    sup.watch("beating", thread_name=watched.thread.name)
    assert sup.check()
    watched.end.set()
    watched.thread.join(5)
    assert not sup.check()
    assert sup.fatal == "beating: the thread ended"


def test_progress_and_stall_limit_go_together() -> None:
    with pytest.raises(ValueError):
        Supervisor().watch("x", lambda: True, progress=lambda: 0.0)


# ---------------------------------------------------------------- Agent.run and the watchdog
class CountingSupervisor(Supervisor):
    def __init__(self) -> None:
        super().__init__()
        self.checks = 0

    def check(self) -> bool:
        healthy = super().check()
        self.checks += 1
        return healthy


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """systemd's side of sd_notify: a datagram socket, and a 0.2 s WatchdogSec for this process."""
    with tempfile.TemporaryDirectory() as tmp, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = os.path.join(tmp, "notify")
        sock.bind(path)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        yield sock


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(512))
        except BlockingIOError:
            return out


def test_watchdog_is_pinged_only_while_every_thread_is_healthy(
    watched: Beating, notify_socket: socket.socket
) -> None:
    sup = CountingSupervisor()
    sup.watch("beating", thread_name=watched.thread.name, progress=lambda: watched.last, stall_after=0.3)
    agent = fake_agent(threading.Event(), sup)
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(Agent.run(agent)))  # type: ignore[arg-type]
    runner.start()
    try:
        wait_for(lambda: b"WATCHDOG=1" in drain(notify_socket), what="a ping while healthy")
        watched.paused.set()
        wait_for(lambda: sup.states()["beating"] == "stalled", what="the stall")
        drain(notify_socket)
        seen = sup.checks
        wait_for(lambda: sup.checks >= seen + 3, what="three checks while stalled")
        assert drain(notify_socket) == []  # no ping for a stalled thread...
        watched.paused.clear()
        wait_for(lambda: b"WATCHDOG=1" in drain(notify_socket), what="a ping once it beats again")
    finally:
        agent.stop_event.set()
        runner.join(5)
    assert codes == [0]


def test_run_returns_non_zero_when_a_thread_died(watched: Beating) -> None:
    stop_event = threading.Event()
    sup = Supervisor(on_fatal=stop_event.set)
    sup.watch("beating", thread_name=watched.thread.name)
    agent = fake_agent(stop_event, sup)
    watched.end.set()
    watched.thread.join(5)
    assert Agent.run(agent) == 1  # type: ignore[arg-type]
    assert sup.fatal == "beating: the thread ended"
