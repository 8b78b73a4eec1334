"""A FlowDriver that is a plain in-memory switch table, recording every bundle it receives."""

from __future__ import annotations

from agent.planner.flows import Flow, FlowKey
from agent.reconciler.flows import BundleRejected


class RecordingDriver:
    def __init__(self) -> None:
        self.table: dict[FlowKey, Flow] = {}
        self.bundles: list[tuple[list[Flow], list[Flow]]] = []
        self.reject: set[FlowKey] = set()  # keys whose ADD the "switch" refuses

    def apply_bundle(self, deletes: list[Flow], adds: list[Flow]) -> None:
        bad = [f for f in adds if f.key in self.reject]
        if bad:
            raise BundleRejected(f"OFPET_BAD_ACTION for {bad[0].text()}")
        self.bundles.append((deletes, adds))
        for f in deletes:
            self.table.pop(f.key, None)
        for f in adds:
            self.table[f.key] = f

    def dump(self) -> dict[FlowKey, Flow]:
        return dict(self.table)

    def same(self, flow: Flow, installed: Flow) -> bool:
        return flow == installed
