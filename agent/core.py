"""The agent core: one worker thread owns the desired state, the planner and the reconciler.

Intake threads (gRPC, Kafka) and dataplane events (OVSDB interface changes, OpenFlow
reconnects) only enqueue work here, so goal states apply strictly in arrival order and no
two threads ever touch the state. Each goal state runs:
state.apply → store.journal → planner.touch → planner.flows streamed into
reconciler.update → statuses. The journaled messages become store rows when the worker is idle.

Memory stays bounded (docs/reliability.md): an intake holds a share of ``queue_limit_bytes``
(wire bytes) from before it parses a goal state until it is answered, so goal states parsed,
decoded, queued or being applied never exceed it, however many pushes arrive; a push that does
not fit is refused (``CoreBusy``: gRPC answers RESOURCE_EXHAUSTED) and Kafka waits for room.
Internal work (repairs, resyncs, replays, acactl snapshots) is never refused.

Failures stay small and visible (docs/reliability.md):
- a journal write that fails undoes the message's changes (``state.revert``), so a resend is
  a change again and gets programmed; the reply says FAILURE and ``retry`` (Kafka re-reads it);
- an owner whose planning, engine entry or flows fail is recorded in ``failed`` and answered
  FAILURE; it never stops the other owners, the resync or the start, and is retried (a resend
  of the same resource, or the repair timer with backoff);
- a bundle whose outcome is unknown (`openflow_timeout`, lost connection) makes the dataplane not ready:
  the switch is dumped, diffed and resynced before anything is answered SUCCESS again.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.model.decode import Wire
from agent.model.resources import Op, Request, ResourceType, Status
from agent.model.state import DesiredState, Outcome
from agent.model.store import Store
from agent.planner.flows import Flow
from agent.planner.plan import Interface, Owner, Planner
from agent.reconciler.flows import ApplyResult, FlowReconciler

if TYPE_CHECKING:
    from agent.dhcp.driver import DhcpDriver
    from agent.routing.driver import RouteDriver

log = logging.getLogger("aca.core")

# Settle once no work came for this long (the reply is out by then), or under unbroken load at
# the latest after this many goal states or changed resources: settling is a pause of its own
# (~8 ms per 1,000 resources), so it waits for a gap rather than land between two replies.
_SETTLE_IDLE_S = 0.05
_SETTLE_AFTER = 1024
_SETTLE_AFTER_RESOURCES = 100_000
# Wire bytes of goal states the core holds at once (parsed, decoded, queued or being applied):
# a goal state costs ~6x its wire size once parsed and decoded (a 100,000-neighbour GoalStateV2
# is 29 MiB on the wire, +70 MiB parsed, +110 MiB decoded), so this caps that at ~450 MB.
QUEUE_LIMIT_BYTES = 64 * 1024 * 1024
# Repairs (a resync while the dataplane is not ready, else the failed owners) back off to this.
_REPAIR_MIN_S = 0.5
_REPAIR_MAX_S = 30.0


@dataclass(slots=True)
class ResourceStatus:
    resource_id: str
    resource_type: ResourceType
    operation: Op
    status: Status
    dataplane_us: int = 0
    config_us: int = 0
    elapsed_us: int = 0
    reason: str = ""


@dataclass(slots=True)
class MessageResult:
    statuses: list[ResourceStatus] = field(default_factory=list)
    total_us: int = 0
    retry: bool = False  # not durably accepted (journal failed, crash): the sender must resend
    config_us: int = 0  # the message's phases, as each status carries them
    dataplane_us: int = 0
    crashed: bool = False  # a bug stopped it half-way (every resource FAILURE)


class CoreBusy(Exception):
    """The core holds as many goal-state bytes as it may: this one is refused, the sender retries."""


class _Admission:
    """Wire bytes of goal states admitted and not yet answered, up to a limit. A goal state is
    always admitted when nothing is held, so any message the intake accepts can go through. A
    waiting caller (Kafka) goes before callers that would be refused, so a flood of gRPC pushes
    cannot starve it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiting = 0
        self._cond = threading.Condition()

    def _fits(self, size: int) -> bool:
        return self.held == 0 or self.held + size <= self.limit

    def acquire(self, size: int, wait: bool) -> bool:
        with self._cond:
            if wait:
                self._waiting += 1
                try:
                    self._cond.wait_for(lambda: self._fits(size))
                finally:
                    self._waiting -= 1
            elif self._waiting or not self._fits(size):
                return False
            self.held += size
            return True

    def release(self, size: int) -> None:
        with self._cond:
            self.held -= size
            self._cond.notify_all()


@dataclass(slots=True)
class _GoalStateWork:
    requests: list[Request]
    source: str
    received: float
    future: Future
    wire: Wire  # the message as received, journaled before the reply


class AgentCore:
    def __init__(
        self,
        state: DesiredState,
        store: Store,
        planner: Planner,
        reconciler: FlowReconciler,
        queue_limit_bytes: int = QUEUE_LIMIT_BYTES,
    ) -> None:
        self.state = state
        self.store = store
        self.planner = planner
        self.reconciler = reconciler
        self.dataplane_ready = False
        self.failed: dict[Owner, str] = {}  # owners whose last programming failed, with the error
        # How the dataplane is brought back in line when it is not ready: the host replaces this
        # with its replay (responder ports re-bound first) after ovs-vswitchd reconnects.
        self.recover: Callable[[], object] = self.resync
        self.dhcp: DhcpDriver | None = None  # the DHCP responder's tables, when it runs
        self.routes: RouteDriver | None = None  # the route fast path's tables, when it runs
        self.counters: Counter[str] = Counter()
        # Called on the worker with (source, result) before each reply is released (metrics).
        self.on_goal_state: Callable[[str, MessageResult], None] | None = None
        self._queue: queue.Queue[Any] = queue.Queue()  # goal states bounded by _admission
        self._admission = _Admission(queue_limit_bytes)
        self._seq = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="aca-core", daemon=True)
        self._stopping = False
        self.last_loop = time.monotonic()  # for the watchdog: the worker is alive
        self._unfolded: set[tuple[ResourceType, str]] = set()  # changed by journaled goal states
        self._journal_seq = 0  # the last journaled goal state
        self._unsettled = 0  # goal states (and resyncs) since the last settle
        self._repair_at: float | None = None  # monotonic time of the next repair, if one is due
        self._repair_backoff = _REPAIR_MIN_S
        # After the stored state was quarantined the agent starts empty: until this (monotonic)
        # time a resync leaves flows of ours it does not know in place, so VMs keep forwarding
        # until the controller's resync refills the state; then they are swept.
        self.strays_kept_until = 0.0
        self._sweep_at: float | None = None
        self._deferred_to_resync = False  # see defer_to_resync

    # ------------------------------------------------------------------ public, any thread
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._queue.put(None)
        self._thread.join(timeout)

    def admit(self, size: int, source: str, wait: bool = False) -> contextlib.ExitStack:
        """Take ``size`` bytes of the goal-state budget for one goal state of that wire size, to
        hold (``with``) while the intake parses, decodes and applies it. Full: CoreBusy (counted),
        or with ``wait`` block until there is room."""
        admission = self._admission
        if not admission.acquire(size, wait):
            self.counters["goal_states_refused_busy"] += 1
            log.warning(
                "event=goal_state_refused reason=core_busy source=%s bytes=%d held_bytes=%d limit_bytes=%d",
                source, size, admission.held, admission.limit,
            )  # fmt: skip
            raise CoreBusy(f"the agent holds {admission.held} of {admission.limit} bytes of goal states")
        held = contextlib.ExitStack()
        held.callback(admission.release, size)
        return held

    def submit(self, requests: list[Request], source: str, wire: Wire) -> Future:
        """Queue a decoded goal state; ``wire`` is the message it was decoded from (journaled)."""
        fut: Future = Future()
        self._queue.put(_GoalStateWork(requests, source, time.perf_counter(), fut, wire))
        return fut

    def apply(
        self, requests: list[Request], source: str, wire: Wire, timeout: float | None = None
    ) -> MessageResult:
        return self.submit(requests, source, wire).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the worker thread (dataplane events, snapshots for acactl)."""
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut

    # ------------------------------------------------------------------ worker
    def _wait_s(self) -> float:
        wait = _SETTLE_IDLE_S if self._unsettled else 1.0
        for due in (self._repair_at, self._sweep_at):
            if due is not None:
                wait = min(wait, max(0.0, due - time.monotonic()))
        return wait

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._wait_s())
            except queue.Empty:
                self.last_loop = time.monotonic()
                if self._repair_at is not None and self.last_loop >= self._repair_at:
                    self._repair()
                if self._sweep_at is not None and self.last_loop >= self._sweep_at:
                    self._sweep_at = None
                    self.dataplane_ready = False  # a full resync, now deleting the strays
                    self.repair_now()
                if self._unsettled:
                    self._settle()
                continue
            self.last_loop = time.monotonic()
            if item is None:
                self._settle()
                return
            if isinstance(item, _GoalStateWork):
                gc.disable()  # until settled: see _settle
                self._unsettled += 1
                self._run_goal_state(item)
                if self._unsettled >= _SETTLE_AFTER or len(self._unfolded) >= _SETTLE_AFTER_RESOURCES:
                    self._settle()
            else:
                fn, fut = item
                try:
                    fut.set_result(fn())
                except Exception as exc:
                    log.exception("event=task_failed")
                    fut.set_exception(exc)

    def _settle(self) -> None:
        """Work deferred off the reply's path, done when idle: journaled goal states become store
        rows, and the garbage collector runs. It is off while goal states apply, because what they
        allocate mostly lives on (state, flows) and rescanning it per 50k allocations cost a big
        goal state ~30-80 ms; after one collection here, freezing moves the survivors out of
        every later scan (they are still freed by reference counting)."""
        start = time.perf_counter()
        if self._unfolded:  # (every journaled goal state changed something)
            self._fold_journal()
        gc.collect()
        gc.freeze()
        gc.enable()
        log.debug("event=settled goal_states=%d us=%d", self._unsettled, (time.perf_counter() - start) * 1e6)
        self._unsettled = 0

    def _journal(self, work: _GoalStateWork, changed: list[Outcome]) -> None:
        """The message made durable before it is programmed and answered; rows come later."""
        self._journal_seq = self.store.journal(work.wire)
        self._unfolded.update((o.request.type, o.request.id) for o in changed)

    def _fold_journal(self) -> None:
        """Rows for what journaled goal states changed; the journal keeps them until this commits."""
        try:
            self.store.materialize(self.state, self._unfolded, journal_through=self._journal_seq)
        except Exception as exc:  # the journal still holds them: retried at the next settle
            log.error("event=store_fold_failed resources=%d error=%r", len(self._unfolded), exc)
            return
        self._unfolded.clear()
        self._journal_seq = 0

    def _run_goal_state(self, work: _GoalStateWork) -> None:
        try:
            result = self._apply_goal_state(work)
        except Exception as exc:  # a bug must not kill the worker; every resource reports FAILURE
            log.error("event=goal_state_crashed source=%s error=%r", work.source, exc, exc_info=True)
            # Whatever it left half-done, the switch is made to match the held state again.
            self.dataplane_lost()
            elapsed = int((time.perf_counter() - work.received) * 1e6)
            result = MessageResult(
                [
                    ResourceStatus(r.id, r.type, r.op, Status.FAILURE, elapsed_us=elapsed, reason=repr(exc))
                    for r in work.requests
                    if r.acted_on
                ],
                elapsed,
                retry=True,
                crashed=True,
            )
        if self.on_goal_state is not None:  # before the reply: whoever reads it sees it counted
            try:
                self.on_goal_state(work.source, result)
            except Exception:
                log.exception("event=goal_state_observer_failed")
        work.future.set_result(result)

    def _apply_goal_state(self, work: _GoalStateWork) -> MessageResult:
        seq = next(self._seq)
        t0 = time.perf_counter()
        outcomes = self.state.apply(work.requests)
        changed = [o for o in outcomes if o.changed]
        reasons: dict[tuple[ResourceType, str], str] = {}  # resources that failed before the switch
        stored = True
        if changed:
            try:
                self._journal(work, changed)
            except Exception as exc:  # e.g. disk full: nothing of this message is held
                self.state.revert(outcomes)
                log.error(
                    "event=journal_failed source=%s resources=%d error=%r", work.source, len(changed), exc
                )
                self.counters["journal_failures"] += 1
                reasons = {(o.request.type, o.request.id): f"not stored: {exc}" for o in changed}
                changed, stored = [], False
        t_config = time.perf_counter()
        touched = self._touch(changed, reasons)
        if self.failed or not self.dataplane_ready:
            # A resend of what is held proves nothing while owners are failed or the switch is
            # away: look its owners up too, so they are retried and its status is true.
            resent = [o for o in outcomes if not o.changed and o.request.op is not Op.DELETE]
            touched.update(self._touch([o for o in resent if o.status is Status.SUCCESS], reasons))
        result = self._program(set().union(*touched.values()) if touched else set())
        t_done = time.perf_counter()
        config_us = int((t_config - t0) * 1e6)
        dataplane_us = int((t_done - t_config) * 1e6)
        elapsed_us = int((time.perf_counter() - work.received) * 1e6)
        no_owners: frozenset[Owner] = frozenset()
        statuses = [
            self._status(
                o,
                touched.get((o.request.type, o.request.id), no_owners),
                reasons.get((o.request.type, o.request.id), ""),
                config_us,
                dataplane_us,
                elapsed_us,
            )
            for o in outcomes
            if o.request.acted_on
        ]
        total_us = int((time.perf_counter() - work.received) * 1e6)
        self._log_goal_state(seq, work, outcomes, statuses, result, config_us, dataplane_us, total_us)
        return MessageResult(
            statuses, total_us, retry=not stored, config_us=config_us, dataplane_us=dataplane_us
        )

    def _touch(
        self, outcomes: list[Outcome], reasons: dict[tuple[ResourceType, str], str]
    ) -> dict[tuple[ResourceType, str], set[Owner]]:
        """The owners each resource's change touches; a resource the planner cannot index fails
        alone (FAILURE with the reason), the others go on."""
        touched = {}
        for o in outcomes:
            key = (o.request.type, o.request.id)
            try:
                touched[key] = self.planner.touch(*key)
            except Exception as exc:
                log.error("event=plan_failed type=%s id=%s error=%r", key[0].name, key[1], exc)
                self.counters["plan_failures"] += 1
                reasons[key] = f"planning failed: {exc!r}"
        return touched

    def _planned(
        self, owners: Iterable[Owner], failures: dict[Owner, str]
    ) -> Iterator[tuple[Owner, list[Flow]]]:
        """Each owner's flows; an owner whose planning raises is left out and recorded."""
        flows = self.planner.flows
        for owner in owners:
            try:
                yield owner, flows(owner)
            except Exception as exc:
                log.error("event=plan_failed owner=%s:%s error=%r", owner[0].name, owner[1], exc)
                self.counters["plan_failures"] += 1
                failures[owner] = f"planning failed: {exc!r}"

    def _program(self, owners: set[Owner]) -> ApplyResult:
        if not owners or self._deferred_to_resync:
            return ApplyResult()
        failures: dict[Owner, str] = {}
        self._apply_dhcp(owners, failures)  # the responder is not OVS: it takes changes while OVS is away
        self._apply_routes(owners, failures)
        result = ApplyResult()
        if self.dataplane_ready:  # else applied by the resync when the switch is back
            try:
                result = self.reconciler.update(self._planned(owners, failures))
            except (ConnectionError, TimeoutError) as exc:
                # The bundle may or may not have been committed: dump, diff and resync before
                # anything is answered, and keep retrying until that succeeds.
                log.warning(
                    "event=dataplane_outcome_unknown error=%s owners=%d action=resync", str(exc), len(owners)
                )
                self.dataplane_lost()
                self.repair_now()
                return result
            failures.update(result.failed)
        for owner in owners:
            if owner in failures:
                self.failed[owner] = failures[owner]
            else:
                self.failed.pop(owner, None)
        if self.failed:
            self._schedule_repair()
        return result

    def _status(
        self,
        outcome: Outcome,
        owners: set[Owner] | frozenset[Owner],
        reason: str,
        config_us: int,
        dataplane_us: int,
        elapsed_us: int,
    ) -> ResourceStatus:
        """SUCCESS only when every owner the resource touched is programmed in OVS."""
        req = outcome.request
        status = outcome.status
        reason = outcome.reason or reason
        if status is Status.SUCCESS:
            failed = self.failed
            failures = [failed[o] for o in owners if o in failed] if failed else None
            if reason or failures:
                status, reason = Status.FAILURE, reason or failures[0]  # type: ignore[index]
            elif (owners and not self.dataplane_ready) or (
                req.op is not Op.DELETE and req.type is ResourceType.PORT and self.planner.is_pending(req.id)
            ):
                status = Status.PENDING
        if reason:
            log.warning(
                "event=resource_rejected id=%s type=%s op=%s status=%s reason=%s",
                req.id, req.type.name, req.op.name, status.name, reason,
            )  # fmt: skip
        return ResourceStatus(
            req.id,
            req.type,
            req.op,
            status,
            dataplane_us=dataplane_us,
            config_us=config_us,
            elapsed_us=elapsed_us,
            reason=reason,
        )

    def _log_goal_state(
        self,
        seq: int,
        work: _GoalStateWork,
        outcomes: list[Outcome],
        statuses: list[ResourceStatus],
        result: ApplyResult,
        config_us: int,
        dataplane_us: int,
        total_us: int,
    ) -> None:
        tally = Counter(s.status.name for s in statuses)
        request_id = work.requests[0].id if work.requests else "-"
        self.counters["goal_states"] += 1
        log.info(
            "event=goal_state gs=%d source=%s first_id=%s resources=%d acted=%d changed=%d statuses=%s "
            "flows_added=%d flows_deleted=%d bundles=%d config_us=%d dataplane_us=%d total_us=%d",
            seq, work.source, request_id, len(outcomes), len(statuses),
            sum(1 for o in outcomes if o.changed),
            ",".join(f"{k}:{v}" for k, v in sorted(tally.items())) or "-",
            result.added, result.deleted, result.bundles, config_us, dataplane_us, total_us,
        )  # fmt: skip

    # ------------------------------------------------------------------ dataplane events (worker thread)
    def resync(self) -> ApplyResult:
        """Program everything from desired state against what the switch has (start, reconnect,
        an unknown outcome). An owner that cannot be planned or programmed fails alone; the
        switch keeps none of its flows (nothing stale is enforced in its name)."""
        # As for a goal state, no garbage collection until the next settle: what this allocates
        # (every owner's flows, the mirror, the decoded dump) mostly lives on, and rescanning it
        # cost a 100k-flow resync ~10%. The settle comes once the worker is idle (after READY).
        gc.disable()
        self._unsettled += 1
        owners = self.planner.rebuild()
        failures: dict[Owner, str] = {
            o: f"planning failed: {reason}" for o, reason in self.planner.unplannable.items()
        }
        self._apply_dhcp(owners, failures)
        self._apply_routes(owners, failures)
        self._deferred_to_resync = False  # every owner is planned and the responders fed
        keep = time.monotonic() < self.strays_kept_until
        result = self.reconciler.resync(self._planned(owners, failures), keep_strays=keep)
        if keep:
            self._sweep_at = self.strays_kept_until
        failures.update(result.failed)
        self.failed = failures
        self.dataplane_ready = True
        log.info(
            "event=resync owners=%d flows=%d added=%d deleted=%d failed=%d strays_kept=%s us=%d",
            len(owners), len(self.reconciler.installed), result.added, result.deleted, len(failures),
            keep, result.elapsed_us,
        )  # fmt: skip
        return result

    def defer_to_resync(self) -> None:
        """Until the next resync, bindings and port changes only update the planner: the start
        sets the tunnel, the responders' ports and the interfaces one by one just before its
        resync, which plans (and feeds the responders) every owner anyway; programming each
        change on its way would plan most owners twice. Only the start calls this, before any
        intake runs."""
        self._deferred_to_resync = True

    def dataplane_lost(self) -> None:
        """The OpenFlow connection dropped (or a bundle's outcome is unknown): hold changes in
        desired state until a resync succeeds; the repair timer keeps trying."""
        if self.dataplane_ready:
            log.warning("event=dataplane_lost")
        self.dataplane_ready = False
        self._schedule_repair()

    def repair_now(self) -> None:
        """Try the repair at once (the switch is back), then with backoff until it succeeds."""
        self._repair_backoff = _REPAIR_MIN_S
        self._repair_at = None
        self._repair()

    def _schedule_repair(self) -> None:
        if self._repair_at is None:
            self._repair_at = time.monotonic() + self._repair_backoff

    def _repair(self) -> None:
        """Bring the switch in line: recover (replay or resync) while the dataplane is not ready,
        else re-program the failed owners. Backs off while it keeps failing."""
        self._repair_at = None
        # A heartbeat between two waits on the switch (a bundle that timed out, then this dump):
        # each is bounded by openflow_timeout, and the watchdog judges them one at a time.
        self.last_loop = time.monotonic()
        try:
            if not self.dataplane_ready:
                self.recover()
            elif self.failed:
                self.counters["owner_retries"] += len(self.failed)
                self._program(set(self.failed))
        except Exception as exc:
            self.dataplane_ready = False
            log.warning("event=repair_failed error=%s retry_in_s=%.1f", str(exc), self._repair_backoff)
        if not self.dataplane_ready or self.failed:
            self.counters["repairs_pending"] += 1
            self._repair_at = time.monotonic() + self._repair_backoff
            self._repair_backoff = min(self._repair_backoff * 2, _REPAIR_MAX_S)
        else:
            self._repair_backoff = _REPAIR_MIN_S

    @property
    def queue_depth(self) -> int:
        """Work items (goal states, dataplane events, acactl snapshots) waiting for the worker."""
        return self._queue.qsize()

    @property
    def repair_in_s(self) -> float | None:
        """Seconds until the next repair attempt (None: nothing to repair)."""
        return None if self._repair_at is None else max(0.0, self._repair_at - time.monotonic())

    def set_interfaces(self, interfaces: list[Interface]) -> ApplyResult:
        """OVSDB reported the bridge's interfaces: bind pending ports that appeared, unbind gone ones."""
        owners = self.planner.set_interfaces(interfaces)
        result = self._program(owners)
        if owners:
            log.info(
                "event=bindings interfaces=%d ports_bound=%d owners=%d flows_added=%d flows_deleted=%d",
                len(interfaces), len(self.planner.bindings), len(owners), result.added, result.deleted,
            )  # fmt: skip
        return result

    def set_tunnel(self, ofport: int | None) -> ApplyResult:
        return self._program(self.planner.set_tunnel(ofport))

    def set_dhcp_port(self, ofport: int | None) -> ApplyResult:
        return self._program(self.planner.set_dhcp_port(ofport))

    def set_route_port(self, ofport: int | None) -> ApplyResult:
        return self._program(self.planner.set_route_port(ofport))

    def route_hit(self, tag: int, ip: str) -> None:
        """The route fast path forwarded to (router tag, ip): on demand, cache its host route."""
        if self.routes is not None and self.dataplane_ready:
            self.routes.cache_hit(tag, ip)

    def _apply_routes(self, owners: set[Owner], failures: dict[Owner, str]) -> None:
        if self.routes is not None:
            self.routes.apply(owners, self.dataplane_ready, failures)

    def _apply_dhcp(self, owners: set[Owner], failures: dict[Owner, str]) -> None:
        if self.dhcp is not None:
            planner = self.planner
            self.dhcp.apply(owners, planner.bindings, planner.dhcp_ofport, planner.ifindexes, failures)
