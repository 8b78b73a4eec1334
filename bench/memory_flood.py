"""The agent's memory under a flood of maximum-size goal states, against its documented ceiling.

Goal states as Alcor sends them (UUID ids, the host's resource list in GoalStateV2): one with
``--neighbours`` L2 neighbours is pushed once (the state the agent then holds), then ``--clients``
clients on their own connections push it ``--pushes`` times each, all starting at once,
alternating GoalStateV2 and GoalState (v1). The copies hold the same neighbours, so the state does
not grow: what the flood adds is the transient memory the bounds are there to cap. ``--pad``
lengthens every neighbour's name to bring the message up to the size limit.

Printed: the encoded sizes (v2, v1, the reply), what parsing and decoding the v2 message costs in
one process, the agent's RSS idle and holding the state, its peak (VmHWM) after the flood, each
push's outcome (SUCCESS, or RESOURCE_EXHAUSTED from the core or from grpc), and the ceiling
docs/reliability.md states for the bounds in force: state RSS + 7 x core_queue_mb +
2 x maximum_concurrent_rpcs x max_message_mb.

    python -m bench.memory_flood                       # the defaults, 100,000 neighbours (~1 min)
    python -m bench.memory_flood --pad 340             # maximum-size (61 MiB) messages
    python -m bench.memory_flood --core-queue-mb 100000 --rpcs 16   # for comparison: no bounds
"""

from __future__ import annotations

import argparse
import collections
import ipaddress
import os
import pathlib
import threading
import time
import uuid
from collections.abc import Callable

import grpc

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc
from agent.config import AgentConfig
from agent.model.decode import decode_v2
from agent.sandbox import goalstates as gs
from bench.common import rss_mb, sandbox

UNLIMITED_REPLIES = [("grpc.max_receive_message_length", -1)]  # a 100,000-status reply is ~6 MB

HOST = "host1"
MiB = 1024 * 1024
_IDS = uuid.UUID("6ba7b812-9dad-11d1-80b4-00c04fd430c8")  # uuid5 namespace: the same ids every run
VPC, SUBNET = str(uuid.uuid5(_IDS, "vpc")), str(uuid.uuid5(_IDS, "subnet"))
VNI, CIDR = 5000, "10.128.0.0/10"


def alcor_states(neighbours: int, pad: int = 0) -> list:
    """The VPC, its subnet and ``neighbours`` L2 neighbours on 50 remote hosts, ids as UUIDs;
    ``pad`` characters added to each neighbour's name."""
    base = int(ipaddress.IPv4Address("10.128.0.16"))
    states = [gs.vpc(VPC, VNI, CIDR), gs.subnet(SUBNET, VPC, CIDR, VNI, "10.128.0.1", op=gs.CREATE)]
    for i in range(neighbours):
        nid = str(uuid.uuid5(_IDS, f"neighbour-{i}"))
        mac = f"fa:16:3e:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"
        state = gs.neighbor(
            nid, VPC, SUBNET, str(ipaddress.IPv4Address(base + i)), mac, f"172.30.0.{i % 50 + 1}"
        )
        state.configuration.name += "x" * pad
        states.append(state)
    return states


def ceiling_mb(state_rss_mb: float, core_queue_mb: int, rpcs: int, max_message_mb: int) -> float:
    """docs/reliability.md, "Memory ceiling"."""
    return state_rss_mb + 7 * core_queue_mb + 2 * rpcs * max_message_mb


def push(
    stub: goalstate_pb2_grpc.GoalStateProvisionerStub, msg: pb.GoalState | pb.GoalStateV2, timeout: float
) -> pb.GoalStateOperationReply:
    if isinstance(msg, pb.GoalState):
        return stub.PushNetworkResourceStates(msg, timeout=timeout)
    (reply,) = stub.PushGoalStatesStream(iter([msg]), timeout=timeout)
    return reply


def flood(
    connect: Callable[[], grpc.Channel], messages: list, clients: int, pushes: int, timeout: float = 600.0
) -> collections.Counter[str]:
    """Each client, on its own connection (``connect()``), pushes ``messages`` in turn ``pushes``
    times, every client starting at once. Outcomes: the replies' statuses (e.g. "SUCCESS"), or
    "RESOURCE_EXHAUSTED:core" / ":grpc" (who refused), or another code."""
    outcomes: collections.Counter[str] = collections.Counter()
    start = threading.Barrier(clients)

    def client(first: int) -> None:
        with connect() as channel:
            stub = goalstate_pb2_grpc.GoalStateProvisionerStub(channel)
            start.wait()
            for n in range(pushes):
                try:
                    reply = push(stub, messages[(first + n) % len(messages)], timeout)
                    codes = {s.operation_status for s in reply.operation_statuses}
                    outcome = ",".join(sorted(pb.OperationStatus.Name(code) for code in codes))
                except grpc.RpcError as exc:
                    who = "core" if "goal states" in (exc.details() or "") else "grpc"
                    outcome = f"{exc.code().name}:{who}"
                outcomes[outcome] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout * pushes)
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    return outcomes


def decode_cost_mb(raw: bytes) -> tuple[float, float]:
    """RSS this process gains parsing ``raw`` (a GoalStateV2), then decoding it as the agent does."""
    me = os.getpid()
    before = rss_mb(me)
    message = pb.GoalStateV2.FromString(raw)
    parsed = rss_mb(me)
    requests = decode_v2(message, "")
    decoded = rss_mb(me)
    del message, requests
    return parsed - before, decoded - parsed


def main(argv: list[str] | None = None) -> int:
    defaults = AgentConfig()
    p = argparse.ArgumentParser(prog="python -m bench.memory_flood", description=__doc__)
    p.add_argument("--neighbours", type=int, default=100_000)
    p.add_argument("--pad", type=int, default=0, help="characters added to every neighbour's name")
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--pushes", type=int, default=2)
    p.add_argument("--core-queue-mb", type=int, default=defaults.core_queue_mb)
    p.add_argument("--max-message-mb", type=int, default=defaults.grpc.max_message_bytes // MiB)
    p.add_argument("--rpcs", type=int, default=defaults.grpc.maximum_concurrent_rpcs)
    args = p.parse_args(argv)

    states = alcor_states(args.neighbours, args.pad)
    v1 = gs.goal_state_v1(*states)
    with sandbox("acab-mf") as box:
        config = pathlib.Path(box.root) / "bounds.toml"
        config.write_text(
            f"[agent]\ncore_queue_mb = {args.core_queue_mb}\n[grpc]\nmax_message_mb = {args.max_message_mb}\n"
            f"maximum_concurrent_rpcs = {args.rpcs}\n"
        )
        host = box.restart_agent(HOST, agent_args=["--config", str(config)])
        v2 = gs.goal_state_v2(*states, host_ip=host.underlay_ip)
        raw = v2.SerializeToString()
        parsed_mb, decoded_mb = decode_cost_mb(raw)
        pid = host.agent_pid
        assert pid is not None
        idle = rss_mb(pid)
        with box.channel(HOST, UNLIMITED_REPLIES) as channel:
            t0 = time.perf_counter()
            reply = push(goalstate_pb2_grpc.GoalStateProvisionerStub(channel), v2, 600.0)
            first_s = time.perf_counter() - t0
        assert {s.operation_status for s in reply.operation_statuses} == {pb.SUCCESS}
        state = rss_mb(pid)
        t0 = time.perf_counter()
        outcomes = flood(lambda: box.channel(HOST, UNLIMITED_REPLIES), [v2, v1], args.clients, args.pushes)
        flood_s = time.perf_counter() - t0
        peak = rss_mb(pid, "VmHWM")
        refused = box.control(HOST, "status")["counters"].get("goal_states_refused_busy", 0)
    ceiling = ceiling_mb(state, args.core_queue_mb, args.rpcs, args.max_message_mb)
    print(
        f"v2_mib={len(raw) / MiB:.1f} v1_mib={v1.ByteSize() / MiB:.1f} "
        f"reply_mib={reply.ByteSize() / MiB:.1f} parsed_mib={parsed_mb:.0f} decoded_mib={decoded_mb:.0f}"
    )
    print(f"first push {first_s:.1f} s, flood {flood_s:.1f} s: {dict(outcomes)}")
    print(
        f"RESULT neighbours={args.neighbours} message_mib={len(raw) / MiB:.1f} clients={args.clients} "
        f"pushes={args.pushes} core_queue_mb={args.core_queue_mb} max_message_mb={args.max_message_mb} "
        f"rpcs={args.rpcs} idle_rss_mib={idle:.0f} state_rss_mib={state:.0f} peak_rss_mib={peak:.0f} "
        f"ceiling_mib={ceiling:.0f} succeeded={outcomes['SUCCESS']} refused_core={refused} "
        f"refused_grpc={outcomes['RESOURCE_EXHAUSTED:grpc']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
