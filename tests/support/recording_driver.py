"""A FlowDriver that is a plain in-memory switch table, recording every bundle it receives."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

from agent.planner.flows import Flow, FlowKey
from agent.reconciler.flows import BundleRejected, KeyedFlows


class RecordedBundle:
    """Collects one bundle; the table changes only on commit, and only if no add is refused."""

    def __init__(self, driver: RecordingDriver) -> None:
        self.driver = driver
        self.deletes: list[Flow] = []
        self.adds: list[Flow] = []

    def add(self, flows: Sequence[Flow]) -> None:
        self.adds.extend(flows)

    def delete(self, flows: Sequence[Flow]) -> None:
        self.deletes.extend(flows)

    def commit(self) -> None:
        if self.driver.faults:  # the switch times out or is gone for this commit
            raise self.driver.faults.pop(0)
        bad = [f for f in self.adds if f.key in self.driver.reject]
        if bad:
            raise BundleRejected(f"OFPET_BAD_ACTION for {bad[0].text()}")
        if not (self.deletes or self.adds):
            return
        self.driver.bundles.append((self.deletes, self.adds))
        for f in self.deletes:
            self.driver.table.pop(f.key, None)
        for f in self.adds:
            self.driver.table[f.key] = f


class RecordingDriver:
    def __init__(self) -> None:
        self.table: dict[FlowKey, Flow] = {}
        self.bundles: list[tuple[list[Flow], list[Flow]]] = []
        self.reject: set[FlowKey] = set()  # keys whose ADD the "switch" refuses
        self.faults: list[Exception] = []  # raised by the next commits, one each (TimeoutError, ...)

    @contextlib.contextmanager
    def bundle(self) -> Iterator[RecordedBundle]:
        yield RecordedBundle(self)

    def dump(self) -> dict[FlowKey, Flow]:
        return dict(self.table)

    @contextlib.contextmanager
    def dumping(self) -> Iterator[Callable[[], KeyedFlows]]:
        yield lambda: KeyedFlows(self.dump())

    def same(self, flow: Flow, installed: Flow) -> bool:
        return flow == installed
