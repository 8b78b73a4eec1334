"""Desired flows per owner vs. the installed mirror; differences go out as one atomic bundle.

The mirror changes only after the switch confirmed the bundle, so a failed bundle leaves
both the switch (bundles are atomic) and the mirror as they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.planner.flows import Flow, FlowKey, FlowSet, flow_set
from agent.planner.plan import Owner

log = logging.getLogger("aca.reconciler")


class FlowBatch(Protocol):
    """One atomic bundle being filled (flows may go to the switch as they are added)."""

    def add(self, flows: Sequence[Flow]) -> None: ...

    def delete(self, flows: Sequence[Flow]) -> None: ...

    def commit(self) -> None: ...


class SwitchFlows(Protocol):
    """One dump of the switch's flows of ours, as a resync reads it."""

    def __len__(self) -> int: ...

    def find(self, flow: Flow) -> Any | None:
        """The switch's flow with ``flow``'s key (what ``FlowDriver.same`` compares), or None."""
        ...

    def by_key(self) -> Mapping[FlowKey, Any]: ...


class KeyedFlows:
    """SwitchFlows over flows already keyed (a driver whose dump is a dict by key)."""

    def __init__(self, flows: Mapping[FlowKey, Any]) -> None:
        self._flows = flows

    def __len__(self) -> int:
        return len(self._flows)

    def find(self, flow: Flow) -> Any | None:
        return self._flows.get(flow.key)

    def by_key(self) -> Mapping[FlowKey, Any]:
        return self._flows


class FlowDriver(Protocol):
    """What the reconciler needs from a bridge (the OpenFlow driver, or a recorder in tests).
    ``bundle()`` discards the batch unless it was committed; refusals raise ``BundleRejected``."""

    def bundle(self) -> AbstractContextManager[FlowBatch]: ...

    def dump(self) -> dict[FlowKey, Any]: ...

    def dumping(self) -> AbstractContextManager[Callable[[], SwitchFlows]]:
        """The dump requested on entry, its result returned by calling what it yields."""
        ...

    def same(self, flow: Flow, installed: Any) -> bool: ...


class BundleRejected(Exception):
    """The switch refused a bundle; nothing of it was applied."""


@dataclass
class ApplyResult:
    added: int = 0
    deleted: int = 0
    bundles: int = 0
    elapsed_us: int = 0
    failed: dict[Owner, str] = field(default_factory=dict)


@dataclass
class Drift:
    """Where the switch differs from the mirror: flows missing, different, or ours but unknown."""

    checked: int = 0
    missing: list[Flow] = field(default_factory=list)
    differ: list[Flow] = field(default_factory=list)
    extra: list[Flow] = field(default_factory=list)


@dataclass
class _Change:
    owners: dict[Owner, FlowSet] = field(default_factory=dict)
    adds: dict[FlowKey, Flow] = field(default_factory=dict)
    deletes: dict[FlowKey, Flow] = field(default_factory=dict)


class FlowReconciler:
    def __init__(self, driver: FlowDriver) -> None:
        self.driver = driver
        self.desired: dict[Owner, FlowSet] = {}
        self.installed: dict[FlowKey, Flow] = {}
        self._claims: dict[FlowKey, Owner] = {}

    def owner_of(self, key: FlowKey) -> Owner | None:
        return self._claims.get(key)

    def _stream(self, updates: Iterable[tuple[Owner, list[Flow]]], result: ApplyResult) -> None:
        """Diff owner by owner, sending each owner's adds at once; deletes go last, minus keys
        that were re-added (an ADD replaces a flow with the same key atomically)."""
        change = _Change()
        installed, desired, claims = self.installed, self.desired, self._claims
        with self.driver.bundle() as bundle:
            for owner, flows in updates:
                new = change.owners[owner] = flow_set(flows)
                held = desired.get(owner)
                if held:  # (a new owner, the bulk of a big goal state, has nothing to delete)
                    for key, flw in held.items():
                        if key not in new and claims.get(key) == owner:
                            change.deletes[key] = flw
                adds = [flw for key, flw in new.items() if key not in installed or installed[key] != flw]
                if adds:
                    for flw in adds:
                        change.adds[flw.key] = flw
                    bundle.add(adds)
            for key in change.adds:
                change.deletes.pop(key, None)
            bundle.delete(list(change.deletes.values()))
            bundle.commit()
        if change.adds or change.deletes:
            result.bundles += 1
        result.added += len(change.adds)
        result.deleted += len(change.deletes)
        self._commit(change)

    def _commit(self, change: _Change) -> None:
        for key in change.deletes:
            self.installed.pop(key, None)
            self._claims.pop(key, None)
        for owner, new in change.owners.items():
            for key, flw in new.items():
                self.installed[key] = flw
                self._claims[key] = owner
            if new:
                self.desired[owner] = new
            else:
                self.desired.pop(owner, None)

    def update(self, updates: Iterable[tuple[Owner, list[Flow]]]) -> ApplyResult:
        """Replace the flows of the given owners in one bundle, sent while ``updates`` is still
        being produced (the switch checks the first flows while the rest is planned). If the
        switch rejects the bundle, each owner is retried alone so one bad resource fails alone
        and the rest is applied."""
        start = time.perf_counter()
        result = ApplyResult()
        planned: dict[Owner, list[Flow]] = {}

        def recorded() -> Iterator[tuple[Owner, list[Flow]]]:
            for owner, flows in updates:
                planned[owner] = flows
                yield owner, flows

        try:
            self._stream(recorded(), result)
        except BundleRejected as exc:
            if len(planned) == 1:
                result.failed.update({o: str(exc) for o in planned})
            else:
                log.warning(
                    "event=bundle_rejected owners=%d error=%s retry=per_owner", len(planned), str(exc)
                )
                for owner, flows in planned.items():
                    try:
                        self._stream([(owner, flows)], result)
                    except BundleRejected as one:
                        result.failed[owner] = str(one)
        result.elapsed_us = int((time.perf_counter() - start) * 1e6)
        return result

    def check(self) -> Drift:
        """The switch's flows of ours against the mirror (read-only): what an operator or a test
        asks to know that OVS holds exactly what the agent answered SUCCESS for."""
        on_switch = self.driver.dump()
        same = self.driver.same
        drift = Drift(checked=len(self.installed))
        for key, flw in self.installed.items():
            if key not in on_switch:
                drift.missing.append(flw)
            elif not same(flw, on_switch[key]):
                drift.differ.append(flw)
        drift.extra = [
            Flow(k[0], k[1], k[2], cookie=f.cookie) for k, f in on_switch.items() if k not in self.installed
        ]
        return drift

    def resync(
        self,
        updates: Mapping[Owner, list[Flow]] | Iterable[tuple[Owner, list[Flow]]],
        keep_strays: bool = False,
    ) -> ApplyResult:
        """Full state against what the switch reports: unchanged flows are left alone (no flush),
        changed ones replaced, flows of ours that nobody wants any more are deleted (unless
        ``keep_strays``: then left in place, outside the mirror). If the switch
        rejects that bundle, the strays go alone and each owner's flows in a bundle of its own: an
        owner the switch refuses fails alone and keeps no flows (nothing stale in its name).
        The dump is requested first: the switch produces it while ``updates`` is planned."""
        start = time.perf_counter()
        result = ApplyResult()
        with self.driver.dumping() as dumped:
            pairs = updates.items() if isinstance(updates, Mapping) else updates
            owners = {o: flow_set(flows) for o, flows in pairs}
            on_switch = dumped()
        same, find = self.driver.same, on_switch.find
        # One pass over every desired flow (~100k at a restart). The mirror is built by dict merges,
        # which reuse each key's stored hash: hashing a key (a nested tuple) is most of a lookup.
        installed: dict[FlowKey, Flow] = {}
        claims: dict[FlowKey, Owner] = {}
        adds: dict[Owner, list[Flow]] = {}
        wanted = found = 0  # desired flows, and how many of them the switch holds by key
        for owner, fs in owners.items():
            installed.update(fs)
            claims.update(dict.fromkeys(fs, owner))
            wanted += len(fs)
            changed = []
            for flw in fs.values():
                held = find(flw)
                if held is None:
                    changed.append(flw)
                    continue
                found += 1
                if not same(flw, held):
                    changed.append(flw)
            adds[owner] = changed
        # No owner shares a key and every desired flow was found, as many as the switch holds:
        # then the switch holds nothing else, and the pass looking for strays is skipped.
        no_strays = wanted == len(installed) and found == wanted == len(on_switch)
        deletes = (
            []
            if keep_strays or no_strays
            else [Flow(k[0], k[1], k[2]) for k in on_switch.by_key() if k not in installed]
        )
        try:
            self._apply(deletes, [f for flows in adds.values() for f in flows])
        except BundleRejected as exc:
            log.warning("event=bundle_rejected owners=%d error=%s retry=per_owner", len(adds), str(exc))
            self._apply(deletes, [])
            for owner, flows in adds.items():
                try:
                    self._apply([], flows)
                except BundleRejected as one:
                    result.failed[owner] = str(one)
            held = on_switch.by_key()
            for owner in result.failed:
                self._apply([Flow(k[0], k[1], k[2]) for k in owners[owner] if k in held], [])
                owners[owner] = {}
            installed = {k: f for fs in owners.values() for k, f in fs.items()}
            claims = {k: o for o, fs in owners.items() for k in fs}
        result.bundles = int(bool(deletes or any(adds.values())))
        result.added = sum(len(flows) for o, flows in adds.items() if o not in result.failed)
        result.deleted = len(deletes)
        self.installed = installed
        self._claims = claims
        self.desired = {o: fs for o, fs in owners.items() if fs}
        result.elapsed_us = int((time.perf_counter() - start) * 1e6)
        return result

    def _apply(self, deletes: list[Flow], adds: list[Flow]) -> None:
        if not (deletes or adds):
            return
        with self.driver.bundle() as bundle:
            bundle.delete(deletes)
            bundle.add(adds)
            bundle.commit()
