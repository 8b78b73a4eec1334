"""How fast the OpenFlow codec encodes bundle-add flow-mods (pure Python, no switch).

The bulk encoder is on the hot path of every big goal state; this was a timed assertion in the
unit tests and lives here now, as a figure. Flows shaped like a routed host route (a register,
an IPv4 match, three actions and a goto), 20,000 per run, best of ``--runs``.
"""

from __future__ import annotations

import argparse
import time

from agent.dataplane.openflow import codec
from agent.dataplane.openflow.codec import FlowModCommand
from agent.planner.flows import Field, Flow, Output, SetField, match
from bench.common import environment


def _flows(count: int) -> list[Flow]:
    return [
        Flow(
            20, 100,
            match((Field.REG6, i % 500 + 1), (Field.ETH_TYPE, 0x800), (Field.IPV4_DST, 0x0A000000 + i)),
            actions=(SetField(Field.ETH_DST, 0x0200_0000_0000 + i), SetField(Field.REG5, i), Output(9)),
            goto=30,
        )
        for i in range(count)
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    flows = _flows(args.flows)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        for i, flow in enumerate(flows):
            codec.encode_bundle_add(1, 3, flow, FlowModCommand.ADD, i)
        times.append(time.perf_counter() - start)
    best = min(times)
    print(f"versions {environment()}")
    print(f"RESULT flows={args.flows} encode_ms={best * 1e3:.1f} flow_mods_per_s={args.flows / best:.0f}")


if __name__ == "__main__":
    main()
