"""10,000 L2 neighbours in one GoalStateV2 over an open gRPC channel, send → reply (flows confirmed
by the bundle commit), against the same flows loaded by `ovs-ofctl --bundle add-flows` into a
fresh bridge of the same ovs-vswitchd.

Like for like: each of ``--runs`` runs (default 5) gets a fresh sandbox host with the agent at its
shipped defaults (INFO log, journal fsynced on the state directory's file system, printed). After
the reply the agent's flows are read from OVS (br-int after the push minus br-int before it, which
held the base pipeline); exactly those flows, as OVS prints them, are what ovs-ofctl loads, and
the raw bridge must then hold the same set. RESULT gives the median and range (min/max) of the
agent's time, the raw time and their ratio per run.

Target (issues 3 and 14): agent/raw ≤ 2.0, with the journal fsynced.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

from agent.model.decode import Wire
from agent.model.store import Store
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from bench.common import (
    agent_rss_mb,
    context_states,
    controller_channel,
    environment,
    neighbor_states,
    sandbox,
)

HOST = "host1"


@dataclasses.dataclass
class Run:
    flows: int
    agent_ms: float
    raw_ms: float
    config_ms: float
    dataplane_ms: float
    rss_mb: float

    @property
    def ratio(self) -> float:
        return self.agent_ms / self.raw_ms


def _flows(box: Sandbox, bridge: str) -> set[str]:
    """The bridge's flows as OVS holds them, one canonical line each (what add-flows reads back)."""
    dump = box.exec(HOST, ["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "--no-names", "dump-flows", bridge])
    return {line.strip() for line in dump.stdout.splitlines() if line.strip()}


def one_run(message: gs.pb.GoalStateV2) -> Run:
    with sandbox("acab-pn") as box, controller_channel(box, HOST) as send:
        base = _flows(box, "br-int")
        t0 = time.perf_counter()
        (reply,) = send(message, timeout=600)
        agent_s = time.perf_counter() - t0
        statuses = {s.operation_status for s in reply.operation_statuses}
        assert statuses == {gs.pb.SUCCESS}, f"unexpected statuses {statuses}"
        split = reply.operation_statuses[-1]
        after = _flows(box, "br-int")
        assert base <= after, "the push replaced base flows"
        agents = after - base
        rss = agent_rss_mb(box, HOST)

        # Baseline: the very same flows, one ovs-ofctl bundle into a fresh bridge of the same OVS.
        box.exec(HOST, ["ovs-vsctl", "add-br", "br-raw", "--", "set", "bridge", "br-raw",
                        "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow14"])  # fmt: skip
        with tempfile.NamedTemporaryFile("w", suffix=".flows") as fh:
            fh.write("\n".join(sorted(agents)) + "\n")
            fh.flush()
            t0 = time.perf_counter()
            box.exec(HOST, ["ovs-ofctl", "-O", "OpenFlow14", "--bundle", "add-flows", "br-raw", fh.name])
            raw_s = time.perf_counter() - t0
        assert _flows(box, "br-raw") == agents, "ovs-ofctl installed other flows than the agent"
    return Run(
        flows=len(agents),
        agent_ms=agent_s * 1e3,
        raw_ms=raw_s * 1e3,
        config_ms=split.network_configuration_time / 1e3,
        dataplane_ms=split.dataplane_programming_time / 1e3,
        rss_mb=rss,
    )


def journal_ms(message: gs.pb.GoalStateV2, samples: int) -> list[float]:
    """The agent's journal append of this message alone (fsync included), each into a fresh store
    on the file system the sandbox keeps the agent's state on: the durability part of agent_ms."""
    wire = Wire(2, message.SerializeToString())
    out = []
    for _ in range(samples):
        with tempfile.TemporaryDirectory() as state_dir:
            store = Store(state_dir)
            t0 = time.perf_counter()
            store.journal(wire)
            out.append((time.perf_counter() - t0) * 1e3)
            store.close()
    return out


def _spread(name: str, values: list[float], digits: int = 1) -> str:
    return (
        f"{name}_median={statistics.median(values):.{digits}f} "
        f"{name}_min={min(values):.{digits}f} {name}_max={max(values):.{digits}f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.program_neighbours", description=__doc__)
    p.add_argument("--neighbours", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args(argv)
    message = gs.goal_state_v2(*context_states(), *neighbor_states(0, args.neighbours))
    size_mb = len(message.SerializeToString()) / 2**20
    with tempfile.TemporaryDirectory() as probe:  # where the sandbox keeps the agent's state
        print(f"versions {environment(state_dir=probe)}")
    print(f"neighbours={args.neighbours} message={size_mb:.1f} MiB runs={args.runs}")
    print(f"load_1m before={os.getloadavg()[0]:.2f} (the machine is shared)")
    runs = []
    for i in range(1, args.runs + 1):
        run = one_run(message)
        runs.append(run)
        print(
            f"run {i}: flows={run.flows} agent {run.agent_ms:7.1f} ms (config {run.config_ms:.1f}, "
            f"dp {run.dataplane_ms:.1f})  ovs-ofctl --bundle {run.raw_ms:7.1f} ms  ratio {run.ratio:.2f}  "
            f"RSS {run.rss_mb:.1f} MB"
        )
    journal = journal_ms(message, args.runs)
    print(f"journal append alone: {' '.join(f'{ms:.1f}' for ms in journal)} ms")
    flows = {run.flows for run in runs}
    assert len(flows) == 1, f"runs installed different flow counts: {flows}"
    print(f"load_1m after={os.getloadavg()[0]:.2f}")
    print(
        f"RESULT runs={len(runs)} neighbours={args.neighbours} flows={flows.pop()} "
        f"{_spread('agent_ms', [r.agent_ms for r in runs])} {_spread('raw_ms', [r.raw_ms for r in runs])} "
        f"{_spread('agent_vs_raw_ratio', [r.ratio for r in runs], 2)} {_spread('journal_ms', journal)} "
        f"config_ms_median={statistics.median(r.config_ms for r in runs):.1f} "
        f"dataplane_ms_median={statistics.median(r.dataplane_ms for r in runs):.1f} "
        f"agent_rss_mb_max={max(r.rss_mb for r in runs):.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
