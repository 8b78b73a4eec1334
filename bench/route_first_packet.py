"""First routed packet through the C fast path vs. a packet that matches an installed flow, and
the fast path's packet rate.

Two hosts, a router with two subnets, VM a (subnet 1, host1) pings VM b (subnet 2, host2).
host1 runs in ``on_demand`` routing mode: b is a known neighbour but has no host-route flow, so
the first packet misses L3_ROUTING, is rewritten by the C engine and re-injected (the agent then
caches the route in OVS). Each trial deletes the cache flow and pings once (the first-packet
RTT); the installed-flow RTT comes from pings once the cache flow is in place. The return path
(host2, proactive) is a flow in both cases, so the difference is the C path's. The packet rate is
the engine's rewrite in a tight C loop (batches of 64 under its lock, as its I/O thread runs).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import statistics
import tempfile
import time

from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from agent._pb import goalstate_pb2 as pb
from agent.planner.cookies import Kind, cookie
from agent.planner.routing import router_tag
from agent.routing.engine import RouteEngine
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from agent.sandbox.two_subnets import DVR, GW1, GW2, goal_state
from bench.common import percentile

VMS = {"a": ("host1", "s1", "10.1.1.10", "fa:16:3e:00:00:0a", GW1[0]),
       "b": ("host2", "s2", "10.1.2.20", "fa:16:3e:00:00:0b", GW2[0])}  # fmt: skip


def _rtts(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", text)]


def _forwarded(box: Sandbox) -> int:
    return box.control("host1", "status")["routing"]["counters"]["forwarded"]


def measure_latency(trials: int) -> tuple[list[float], list[float]]:
    with tempfile.TemporaryDirectory(prefix="acab-rfp-") as root:
        box = Sandbox(pathlib.Path(root) / "sandbox", prefix="acab-rfp-")
        try:
            box.host_up("host1", agent_args=("--log-level", "WARNING", "--routing-mode", "on_demand"))
            box.host_up("host2", agent_args=("--log-level", "WARNING"))
            for vm, (host, _sn, ip, mac, gw) in VMS.items():
                box.vm_add(host, vm, mac, f"{ip}/24", gw=gw, iface_id=f"port-{vm}")
            for host in DVR:
                (reply,) = box.push_message(host, goal_state(box, host, VMS))
                assert {s.operation_status for s in reply.operation_statuses} == {pb.SUCCESS}, reply
            target = VMS["b"][2]
            box.vm_exec(
                "a", ["ping", "-c", "3", "-i", "0.2", "-W", "2", target], check=True
            )  # warm ARP/underlay
            cache = f"cookie={cookie(Kind.ROUTE_CACHE, 'port-b'):#x}/-1"
            first: list[float] = []
            for _ in range(trials):
                box.exec(
                    "host1", ["ovs-ofctl", "-O", "OpenFlow14", "del-flows", "br-int", f"table=35,{cache}"]
                )
                time.sleep(1.1)  # the datapath forgets the flow; the engine reports a hit again (1 s)
                before = _forwarded(box)
                out = box.vm_exec("a", ["ping", "-c", "1", "-W", "2", target], check=True).stdout
                assert _forwarded(box) == before + 1, "the first packet did not take the C path"
                first.extend(_rtts(out))
            wait_for(lambda: box.control("host1", "status")["routing"]["cache_installs"] > 0, 5, "cache flow")
            time.sleep(0.6)
            before = _forwarded(box)
            out = box.vm_exec(
                "a", ["ping", "-c", str(trials * 2), "-i", "0.05", "-W", "2", target], check=True
            )
            assert _forwarded(box) == before, "packets took the C path although a flow was installed"
            return first, _rtts(out.stdout)
        finally:
            box.down()


def measure_rate(iterations: int) -> float:
    tag = router_tag("r1")
    engine = RouteEngine()
    try:
        engine.set_router(tag, DVR["host1"])
        engine.set_segment(102, 2)
        engine.set_dest(tag, VMS["b"][2], VMS["b"][3], DVR["host1"], 102)
        src = "0a:cb:" + ":".join(f"{b:02x}" for b in tag.to_bytes(4, "big"))
        frame = bytes(
            Ether(src=src, dst="0a:cb:00:00:00:65")
            / IP(src=VMS["a"][2], dst=VMS["b"][2])
            / ICMP()
            / (b"x" * 56)
        )
        return max(engine.bench(frame, iterations) for _ in range(3))
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.route_first_packet", description=__doc__)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--iterations", type=int, default=2_000_000)
    args = p.parse_args(argv)
    pps = measure_rate(args.iterations)
    first, flow = measure_latency(args.trials)
    f_med, w_med = statistics.median(first), statistics.median(flow)
    for name, values, med in (("first packet via C path", first, f_med), ("installed flow", flow, w_med)):
        p90 = percentile(values, 90)
        print(f"{name:24} median {med:7.3f} ms  p90 {p90:7.3f} ms  (n={len(values)})")
    print(f"C rewrite rate           {pps / 1e6:7.2f} Mpps (98-byte ICMP frame, tight loop)")
    print(
        f"RESULT first_packet_ms={f_med:.3f} flow_ms={w_med:.3f} first_vs_flow_ratio={f_med / w_med:.2f} "
        f"c_rewrite_pps={pps:.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
