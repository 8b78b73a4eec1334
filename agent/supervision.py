"""Supervision of the agent's long-lived threads, so none of them can die or hang unseen.

Every long-lived thread is registered here under a short name, in one of two ways:

* ``spawn``: the supervisor runs the loop itself. A loop that raises is restarted after a
  backoff (doubling up to a cap, reset after a long healthy run) when its owner says that is
  safe; otherwise it is fatal. A loop that returns has finished its job (stopped on request).
* ``watch``: the thread belongs to its component (the core worker, the OVSDB IDL loop, the
  OpenFlow reader, the C I/O threads) and is checked through probes: ``alive`` (is it still
  running?) and, for loops that wake periodically, ``progress`` (when did it last go round?).
  A watched thread that ends while the agent is not stopping is fatal: it cannot be resumed in
  place, but the whole process can (systemd restarts it; the flows stay installed meanwhile).

Health: a thread is healthy when it runs and, if it has a heartbeat, beat within its
``stall_after`` limit. ``Agent.run`` pings the systemd watchdog only while every registered
thread is healthy, so a stalled one gets the process killed and restarted by systemd. A fatal
death is logged as ``event=thread_died name=... error=...`` and makes the agent exit non-zero.

Uncaught exceptions of watched threads reach ``threading.excepthook``; ``install_excepthook``
records them (by thread name), so the death is reported with its error at once, not at the
next check.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("aca.supervision")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0


class ThreadState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STALLED = "stalled"  # alive, but no heartbeat within its limit
    RESTARTING = "restarting"  # died; waiting out its backoff before running again
    STOPPED = "stopped"  # ended on request, or not running without an error (a C thread between
    # its engine's stop and start): unhealthy, not fatal
    DEAD = "dead"  # died and may not be restarted: the process exits


# A watched thread's probe: True while it runs; False when it is not running but nothing went
# wrong (stopped, or between a stop and a start): unhealthy, not fatal; a string when it ended
# by itself: why (fatal).
Liveness = bool | str


def thread_liveness(thread_name: str) -> Callable[[], Liveness]:
    """The probe of a Python thread (found by name) that its component never ends except when
    the agent stops: gone means it died (``excepthook`` has recorded why, if it raised)."""

    def probe() -> Liveness:
        return any(t.name == thread_name for t in threading.enumerate()) or "the thread ended"

    return probe


def io_thread_liveness(status: Callable[[], tuple[int, int]]) -> Callable[[], Liveness]:
    """The probe of a C engine's I/O thread from its ``io_status()`` (1 running, 0 stopped,
    -errno ended by itself)."""

    def probe() -> Liveness:
        code, _loops = status()
        return f"I/O thread ended: {os.strerror(-code)}" if code < 0 else code == 1

    return probe


class Heartbeat:
    """Handed to a spawned loop: ``beat()`` once per round; cheap (one float store)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()


@dataclass
class _Entry:
    name: str
    thread_name: str
    stall_after: float | None
    alive: Callable[[], Liveness] | None = None  # watched threads
    progress: Callable[[], float] | None = None  # monotonic time of the last round
    restart: bool = False  # spawned threads
    state: ThreadState = ThreadState.STARTING
    error: str = ""
    restarts: int = 0
    heartbeat: Heartbeat = field(default_factory=Heartbeat)


class Supervisor:
    """Registry and health of the long-lived threads; see the module docstring.

    ``on_fatal`` runs once, on the first fatal death (the agent sets its stop event with it).
    """

    def __init__(
        self,
        on_fatal: Callable[[], None] | None = None,
        backoff_min: float = BACKOFF_MIN_S,
        backoff_max: float = BACKOFF_MAX_S,
    ) -> None:
        self._on_fatal = on_fatal
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.fatal: str | None = None  # the first fatal death: "name: error"

    # ------------------------------------------------------------ registration
    def spawn(
        self,
        name: str,
        loop: Callable[[Heartbeat], None],
        *,
        restart: bool,
        stall_after: float | None = None,
        thread_name: str | None = None,
    ) -> threading.Thread:
        """Run ``loop(heartbeat)`` on a new daemon thread; restarted on an exception if ``restart``.

        ``stall_after`` (s): longest gap between beats that still counts as healthy; None when
        the loop may block indefinitely by design (then being alive is the check).
        """
        entry = _Entry(name, thread_name or name, stall_after, restart=restart)
        self._register(entry)
        thread = threading.Thread(target=self._run, args=(entry, loop), name=entry.thread_name, daemon=True)
        thread.start()
        return thread

    def watch(
        self,
        name: str,
        alive: Callable[[], Liveness] | None = None,
        *,
        thread_name: str | None = None,
        progress: Callable[[], float] | None = None,
        stall_after: float | None = None,
    ) -> None:
        """Check a thread its component owns through ``alive()`` (see ``Liveness``; by default:
        the Python thread called ``thread_name`` exists). ``thread_name`` also ties the thread's
        uncaught exception to it. ``progress()`` is the monotonic time of its last round (the
        heartbeat of a loop that wakes periodically), judged against ``stall_after``."""
        if (progress is None) != (stall_after is None):
            raise ValueError(f"{name}: progress and stall_after go together")
        if alive is None:
            if thread_name is None:
                raise ValueError(f"{name}: give alive or thread_name")
            alive = thread_liveness(thread_name)
        self._register(_Entry(name, thread_name or name, stall_after, alive=alive, progress=progress))

    def _register(self, entry: _Entry) -> None:
        with self._lock:
            if entry.name in self._entries:
                raise ValueError(f"thread {entry.name!r} is already supervised")
            self._entries[entry.name] = entry

    # ------------------------------------------------------------ health
    def check(self) -> bool:
        """Re-evaluate every thread (probes, heartbeats); True when all are healthy."""
        healthy = True
        for entry in list(self._entries.values()):
            self._evaluate(entry)
            healthy &= entry.state is ThreadState.RUNNING
        return healthy

    def states(self) -> dict[str, str]:
        """Name → state, as of the last ``check`` (or the spawned loop's own transitions)."""
        return {name: entry.state.value for name, entry in sorted(self._entries.items())}

    def errors(self) -> dict[str, str]:
        """Name → the error that last ended it, for threads that died at least once."""
        return {name: e.error for name, e in sorted(self._entries.items()) if e.error}

    def _evaluate(self, entry: _Entry) -> None:
        if self._stopping.is_set() or entry.state in (ThreadState.DEAD, ThreadState.RESTARTING):
            return
        if entry.alive is not None:
            live = entry.alive()
            if isinstance(live, str):
                self._died(entry, entry.error or live)
                return
            if not live:
                if entry.state is not ThreadState.STOPPED:
                    log.warning("event=thread_not_running name=%s", entry.name)
                entry.state = ThreadState.STOPPED
                return
        elif entry.state is ThreadState.STOPPED:  # a spawned loop that returned
            return
        last = entry.progress() if entry.progress is not None else entry.heartbeat.last
        idle = time.monotonic() - last
        if entry.stall_after is not None and idle > entry.stall_after:
            if entry.state is not ThreadState.STALLED:
                log.error(
                    "event=thread_stalled name=%s idle_s=%.1f limit_s=%s", entry.name, idle, entry.stall_after
                )
            entry.state = ThreadState.STALLED
            return
        if entry.state is ThreadState.STALLED:
            log.warning("event=thread_recovered name=%s", entry.name)
        entry.state = ThreadState.RUNNING

    # ------------------------------------------------------------ deaths
    def excepthook(self, args: threading.ExceptHookArgs) -> None:
        """For ``threading.excepthook``: an uncaught exception in a watched thread is its death."""
        name = args.thread.name if args.thread is not None else ""
        watched = (e for e in self._entries.values() if e.alive is not None)
        entry = next((e for e in watched if e.thread_name == name), None)
        if entry is None:
            threading.__excepthook__(args)
            return
        log.error(
            "event=thread_exception name=%s",
            entry.name,
            exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
        )
        entry.error = repr(args.exc_value)
        if not self._stopping.is_set():
            self._died(entry, entry.error)

    def install_excepthook(self) -> None:
        threading.excepthook = self.excepthook

    def _died(self, entry: _Entry, error: str) -> None:
        entry.error = error
        entry.state = ThreadState.DEAD
        log.critical("event=thread_died name=%s error=%s action=exit", entry.name, error)
        with self._lock:
            first = self.fatal is None
            if first:
                self.fatal = f"{entry.name}: {error}"
        if first and self._on_fatal is not None:
            self._on_fatal()

    def _run(self, entry: _Entry, loop: Callable[[Heartbeat], None]) -> None:
        backoff = self._backoff_min
        while True:
            started = time.monotonic()
            entry.heartbeat.beat()
            entry.state = ThreadState.RUNNING
            try:
                loop(entry.heartbeat)
            except BaseException as exc:  # whatever ends the loop is reported
                error, restartable = repr(exc), entry.restart and isinstance(exc, Exception)
                log.error("event=thread_exception name=%s", entry.name, exc_info=True)
            else:
                entry.state = ThreadState.STOPPED
                return
            entry.error = error
            if self._stopping.is_set():
                entry.state = ThreadState.STOPPED
                return
            if not restartable:
                self._died(entry, error)
                return
            if time.monotonic() - started > self._backoff_max:
                backoff = self._backoff_min  # it ran well for a while: this is a fresh failure
            entry.restarts += 1
            entry.state = ThreadState.RESTARTING
            log.error(
                "event=thread_died name=%s error=%s action=restart restart_in_s=%.2f restarts=%d",
                entry.name, error, backoff, entry.restarts,
            )  # fmt: skip
            if self._stopping.wait(backoff):
                entry.state = ThreadState.STOPPED
                return
            backoff = min(backoff * 2, self._backoff_max)
            log.warning("event=thread_restarted name=%s restarts=%d", entry.name, entry.restarts)

    # ------------------------------------------------------------ shutdown
    def stop(self) -> None:
        """From here on, threads ending are the agent stopping them: no restarts, no deaths."""
        self._stopping.set()
