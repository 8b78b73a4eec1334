"""Routed packets through each of the agent's three paths: latency, and what each forwards.

Two hosts, one router with two subnets; VM a (subnet 1, host1) sends to VMs on host2 (subnet 2).
host2 routes proactively, so every return path is a flow and the differences are host1's:

* **installed flow**: host1 ``proactive``: b's host route is an OpenFlow flow (OVS alone);
* **C path**: host1 ``on_demand`` with ``cache_idle_timeout = 0``: b is a known neighbour without
  a flow, so every packet misses ``L3_ROUTING`` and the C engine rewrites and re-injects it (the
  path the first packet to a destination takes when caching is on);
* **unknown destination**: c is not known on host1: its packet is punted and held, the agent
  asks a controller simulator over real gRPC (``RequestGoalStates`` ON_DEMAND), which pushes c as
  a neighbour and answers SUCCESS, and the held packet is released. c is deleted again after
  each trial, so every trial is the whole round trip.

Latency: one ping RTT per trial, p50/p99 over ``--trials`` (default 200) trials per path.
Forwarding rate: a UDP flood from a to b for ``--seconds``, through the installed flow and
through the C path; received packets per second at b beside the offered rate (one Python
sender, so the offered rate is a ceiling of its own). ``c_rewrite_loop_pps`` is the C rewrite
alone in a tight loop without I/O: a CPU ceiling, not a forwarding rate. Agents run at their
shipped defaults (INFO logging).
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import re
import sys
import tempfile
import time
from collections.abc import Iterator

from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether

from agent._pb import goalstate_pb2 as pb
from agent.planner.routing import router_tag
from agent.routing.engine import RouteEngine
from agent.sandbox import goalstates as gs
from agent.sandbox.controller import TestController, serve
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from agent.sandbox.two_subnets import DVR, GW1, GW2, goal_state, neighbour
from bench.common import environment, percentile

# vm → (host, subnet, ip, mac, gateway ip); c is host2's but never pushed to host1 ahead
VMS = {"a": ("host1", "s1", "10.1.1.10", "fa:16:3e:00:00:0a", GW1[0]),
       "b": ("host2", "s2", "10.1.2.20", "fa:16:3e:00:00:0b", GW2[0]),
       "c": ("host2", "s2", "10.1.2.30", "fa:16:3e:00:00:0c", GW2[0])}  # fmt: skip
KNOWN_ON_HOST1 = {vm: spec for vm, spec in VMS.items() if vm != "c"}

# Run inside VM a: UDP datagrams to argv[1] for argv[2] seconds; prints how many were sent.
_FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst, end, n, payload = (sys.argv[1], 9), time.monotonic() + float(sys.argv[2]), 0, b"x" * 64
while time.monotonic() < end:
    for _ in range(256):
        s.sendto(payload, dst)
    n += 256
print(n)
"""


def _rtts(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", text)]


def _forwarded(box: Sandbox) -> int:
    return box.control("host1", "status")["routing"]["counters"]["forwarded"]


def _rx_packets(box: Sandbox, vm: str) -> int:
    out = box.vm_exec(vm, ["cat", "/sys/class/net/eth0/statistics/rx_packets"], check=True).stdout
    return int(out)


def _succeeded(replies: list) -> None:
    statuses = {s.operation_status for r in replies for s in r.operation_statuses}
    assert statuses == {pb.SUCCESS}, replies


def flood(box: Sandbox, seconds: float) -> tuple[float, float]:
    """(offered, received at b) packets per second of a UDP flood from a to b."""
    before = _rx_packets(box, "b")
    sent = int(box.vm_exec("a", [sys.executable, "-c", _FLOOD, VMS["b"][2], str(seconds)], check=True).stdout)
    time.sleep(0.5)  # the last packets drain through the datapath
    return sent / seconds, (_rx_packets(box, "b") - before) / seconds


def pings(box: Sandbox, vm: str, count: int) -> list[float]:
    out = box.vm_exec("a", ["ping", "-c", str(count), "-i", "0.02", "-W", "2", VMS[vm][2]], check=True).stdout
    return _rtts(out)


class _Controller(TestController):
    """Answers host1's ON_DEMAND for c by pushing c to host1 as a neighbour, then SUCCESS."""

    __test__ = False

    def __init__(self, box: Sandbox) -> None:
        super().__init__(self._answer)
        self.box = box

    def _answer(self, req: pb.HostRequest.ResourceStateRequest) -> int:
        if req.request_type != pb.ON_DEMAND or req.destination_ip != VMS["c"][2]:
            return pb.FAILURE
        host_ip = self.box.host("host1").underlay_ip
        _succeeded(
            self.box.push_message("host1", gs.goal_state_v2(neighbour(self.box, VMS, "c"), host_ip=host_ip))
        )
        return pb.SUCCESS


def _forget_c(box: Sandbox) -> None:
    """Delete c from host1 (as the controller would when it moves): the next packet is unknown."""
    nb = neighbour(box, VMS, "c")
    nb.operation_type = pb.DELETE
    _succeeded(box.push_message("host1", gs.goal_state_v2(nb, host_ip=box.host("host1").underlay_ip)))


@contextlib.contextmanager
def _hosts(root: pathlib.Path) -> Iterator[tuple[Sandbox, str]]:
    """host2 proactive with b and c; host1 on_demand without caching, a controller simulator
    behind it; VMs plugged and their goal states pushed. Yields the box and host1's agent flags."""
    box = Sandbox(root / "sandbox", prefix="acab-rfp-")
    config = root / "host1.toml"
    config.write_text("[routing]\nmode = 'on_demand'\ncache_idle_timeout = 0\n")
    try:
        with serve(_Controller(box), str(root / "controller.sock"), box.pki) as address:
            host1_args = ("--controller", address)
            box.host_up("host1", agent_args=(*host1_args, "--config", str(config)))
            box.host_up("host2")
            for vm, (host, _sn, ip, mac, gw) in VMS.items():
                box.vm_add(host, vm, mac, f"{ip}/24", gw=gw, iface_id=f"port-{vm}")
            _succeeded(box.push_message("host1", goal_state(box, "host1", KNOWN_ON_HOST1)))
            _succeeded(box.push_message("host2", goal_state(box, "host2", VMS)))
            yield box, address
    finally:
        box.down()


def measure(trials: int, seconds: float) -> dict[str, float]:
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="acab-rfp-") as tmp, _hosts(pathlib.Path(tmp)) as (box, address):
        box.vm_exec(
            "a", ["ping", "-c", "3", "-i", "0.2", "-W", "2", VMS["b"][2]], check=True
        )  # ARP, underlay
        before = _forwarded(box)
        c_path = pings(box, "b", trials)
        assert _forwarded(box) - before >= trials, "pings to b did not all take the C path"
        out["c_path_offered_pps"], out["c_path_fwd_pps"] = flood(box, seconds)
        unknown: list[float] = []
        for _ in range(trials):
            unknown += _rtts(box.vm_exec("a", ["ping", "-c", "1", "-W", "3", VMS["c"][2]], check=True).stdout)
            _forget_c(box)
        # The installed-flow path: host1 proactive (b's host route becomes a flow).
        box.restart_agent("host1", agent_args=("--controller", address))
        wait_for(lambda: box.control("host1", "status").get("ready"), 30, "host1 ready again")
        _succeeded(box.push_message("host1", goal_state(box, "host1", KNOWN_ON_HOST1)))
        box.vm_exec("a", ["ping", "-c", "3", "-i", "0.2", "-W", "2", VMS["b"][2]], check=True)
        before = _forwarded(box)
        flow = pings(box, "b", trials)
        out["flow_offered_pps"], out["flow_fwd_pps"] = flood(box, seconds)
        assert _forwarded(box) == before, "packets took the C path although a flow was installed"
    for name, values in (("flow", flow), ("c_path", c_path), ("unknown", unknown)):
        assert len(values) == trials, f"{name}: {len(values)} of {trials} pings answered"
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = percentile(values, 50), percentile(values, 99)
    return out


def measure_rewrite_loop(iterations: int) -> float:
    """The C rewrite alone, batches of 64 under the engine's lock: packets per second of CPU."""
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
    p.add_argument("--trials", type=int, default=200, help="pings per path")
    p.add_argument("--seconds", type=float, default=3.0, help="length of each UDP flood")
    p.add_argument("--iterations", type=int, default=2_000_000, help="rewrites in the tight loop")
    args = p.parse_args(argv)
    print(f"versions {environment()}")
    loop_pps = measure_rewrite_loop(args.iterations)
    r = measure(args.trials, args.seconds)
    for name, label in (("flow", "installed flow"), ("c_path", "C path"), ("unknown", "unknown destination")):
        p50, p99 = r[f"{name}_p50_ms"], r[f"{name}_p99_ms"]
        print(f"{label:20} p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  (n={args.trials})")
    for name, label in (("flow", "installed flow"), ("c_path", "C path")):
        print(
            f"{label:20} forwarded {r[f'{name}_fwd_pps']:9.0f} pps of {r[f'{name}_offered_pps']:9.0f} offered"
        )
    print(f"C rewrite alone      {loop_pps / 1e6:7.2f} Mpps (tight loop, no I/O: not a forwarding rate)")
    keys = " ".join(f"{k}={v:.3f}" if k.endswith("_ms") else f"{k}={v:.0f}" for k, v in r.items())
    print(
        f"RESULT {keys} c_path_vs_flow_ratio={r['c_path_p50_ms'] / r['flow_p50_ms']:.2f} "
        f"unknown_vs_flow_ratio={r['unknown_p50_ms'] / r['flow_p50_ms']:.2f} "
        f"c_rewrite_loop_pps={loop_pps:.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
