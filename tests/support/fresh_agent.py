"""The reference a fault test compares against: what a fresh agent programs from a goal state.

A fault test drives an agent through kills and restarts, then asks: are the flows in OVS the ones
an agent that never saw any of it would install? The fresh agent runs on the *same* host (same
OVS, so ofports of VMs, tunnel and internal ports are the same): state directory wiped, `br-int`
emptied, no Kafka, and the goal state pushed once over gRPC.
"""

from __future__ import annotations

import pathlib
import shutil

from agent._pb import goalstate_pb2 as pb
from agent.sandbox.hosts import Sandbox
from tests.support.traffic import dump_flows


def fresh_agent_flows(
    sb: Sandbox, host: str, message: pb.GoalStateV2, timeout: float = 120.0
) -> tuple[pb.GoalStateOperationReply, list[str]]:
    """Replace the host's agent by a fresh one fed only ``message``; its reply and `br-int`'s
    flows (sorted, without counters). The agent under test must have been dumped before."""
    sb.stop_agent(host)
    state_dir = pathlib.Path(sb.host(host).state_dir)
    shutil.rmtree(state_dir)
    state_dir.mkdir()
    sb.exec(host, ["ovs-ofctl", "-O", "OpenFlow14", "del-flows", "br-int"])
    sb.restart_agent(host, agent_args=[])
    (reply,) = sb.push_message(host, message, timeout=timeout)
    return reply, dump_flows(sb, host)
