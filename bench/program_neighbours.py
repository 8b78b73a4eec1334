"""10,000 L2 neighbours in one GoalStateV2 over an open gRPC channel, send → reply (flows confirmed
by the bundle commit), against the same flows loaded by `ovs-ofctl --bundle add-flows` on the same OVS.

Target (issue 3): agent/raw ≤ 2.0.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

from agent.model.decode import decode_v2
from agent.model.state import DesiredState
from agent.planner.plan import Planner
from agent.sandbox import goalstates as gs
from bench.common import agent_rss_mb, context_states, controller_channel, neighbor_states, sandbox


def planned_flows(message: object, tunnel_ofport: int) -> list:
    state = DesiredState()
    state.apply(decode_v2(message, ""))
    planner = Planner(state, "")
    planner.set_tunnel(tunnel_ofport)
    return [f for owner in planner.rebuild() for f in planner.flows(owner)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.program_neighbours", description=__doc__)
    p.add_argument("--neighbours", type=int, default=10_000)
    args = p.parse_args(argv)
    message = gs.goal_state_v2(*context_states(), *neighbor_states(0, args.neighbours))
    size_mb = len(message.SerializeToString()) / 2**20
    with sandbox("acab-pn") as box, controller_channel(box, "host1") as send:
        t0 = time.perf_counter()
        (reply,) = send(message, timeout=600)
        agent_s = time.perf_counter() - t0
        statuses = {s.operation_status for s in reply.operation_statuses}
        assert statuses == {gs.pb.SUCCESS}, f"unexpected statuses {statuses}"
        split = reply.operation_statuses[-1]
        rss = agent_rss_mb(box, "host1")

        # Baseline: the very same flows, one ovs-ofctl bundle into a fresh bridge of the same OVS.
        box.exec("host1", ["ovs-vsctl", "add-br", "br-raw", "--", "set", "bridge", "br-raw",
                           "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow14"])  # fmt: skip
        flows = planned_flows(message, tunnel_ofport=1)
        with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as fh:
            fh.write("\n".join(f.text() for f in flows) + "\n")
        t0 = time.perf_counter()
        box.exec("host1", ["ovs-ofctl", "-O", "OpenFlow14", "--bundle", "add-flows", "br-raw", fh.name])
        raw_s = time.perf_counter() - t0
        pathlib.Path(fh.name).unlink()
        aggregate = box.exec("host1", ["ovs-ofctl", "-O", "OpenFlow14", "dump-aggregate", "br-raw"]).stdout
        installed = int(aggregate.split("flow_count=")[1].split()[0])
        assert installed == len(flows), (installed, len(flows))

    print(f"neighbours={args.neighbours} flows={len(flows)} message={size_mb:.1f} MiB")
    config_ms = split.network_configuration_time / 1e3
    dataplane_ms = split.dataplane_programming_time / 1e3
    print(f"agent send→reply        {agent_s * 1e3:9.1f} ms  (config {config_ms:.1f}, dp {dataplane_ms:.1f})")
    print(f"ovs-ofctl --bundle      {raw_s * 1e3:9.1f} ms")
    print(f"agent RSS after         {rss:9.1f} MB")
    print(
        f"RESULT neighbours={args.neighbours} flows={len(flows)} agent_ms={agent_s * 1e3:.1f} "
        f"raw_ms={raw_s * 1e3:.1f} agent_vs_raw_ratio={agent_s / raw_s:.2f} "
        f"config_ms={config_ms:.1f} dataplane_ms={dataplane_ms:.1f} agent_rss_mb={rss:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
