"""Restarts under load: 50,000 L2 neighbours (100,000 flows) and 100 local ports on one host, a
ping between two of its VMs every 10 ms throughout.

(a) the agent SIGKILLed and started again: time from the kill to its `event=ready` line (the
    resync against the switch done), the flows its resync rewrote (read from its
    `event=resync ... added= deleted=` line: must be 0, the switch already held them all) and the
    pings lost (must be 0: flows stay installed while the agent is down);
(b) ovs-vswitchd restarted (its tables start empty): time from the stop to the agent's replay
    committed (flows back), and the pings lost meanwhile.

After each, the whole `br-int` (normalised dump) must equal what it was before. The agent runs at
its shipped defaults (INFO log). 98 of the ports are OVS internal interfaces carrying iface-ids;
two are VMs (namespaces) that ping each other. The sandbox's OVS runs the userspace (netdev)
datapath, which stops forwarding while ovs-vswitchd is down: (b) loses pings by construction.
Aim (issue 14): under 3 s to READY at 100,000 flows.
`--quick` (2,000 neighbours, 10 ports) is what the test suite runs.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from bench.common import (
    SUBNET,
    VPC,
    context_states,
    controller_channel,
    environment,
    neighbor_states,
    sandbox,
)

HOST = "host1"
CHUNK = 10_000
PING_INTERVAL_S = 0.01


def _port_ip(n: int) -> str:
    return f"10.190.{n // 250}.{n % 250 + 2}"


def _port_mac(n: int) -> str:
    return f"fa:16:3e:fe:{n >> 8:02x}:{n & 0xFF:02x}"


def _flows(box: Sandbox) -> list[str]:
    """`br-int` without counters, sorted: comparable across restarts."""
    out = box.exec(HOST, ["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows", "br-int"]).stdout
    return sorted(line.strip() for line in out.splitlines() if "cookie=" in line)


def _flow_count(box: Sandbox) -> int:
    out = box.exec(HOST, ["ovs-ofctl", "-O", "OpenFlow14", "dump-aggregate", "br-int"], check=False).stdout
    found = re.search(r"flow_count=(\d+)", out)
    return int(found.group(1)) if found else -1


class AgentLog:
    """The agent's log file from a mark on: what it said since the fault was injected."""

    _TS = re.compile(r"^ts=(\S+)Z ")

    def __init__(self, box: Sandbox) -> None:
        self.path = box.host(HOST).log_file
        self.start = 0

    def mark(self) -> None:
        with open(self.path, "rb") as fh:
            self.start = fh.seek(0, os.SEEK_END)

    def since(self) -> str:
        with open(self.path, "rb") as fh:
            fh.seek(self.start)
            return fh.read().decode(errors="replace")

    def line(self, event: str, after: str = "") -> str | None:
        """The first line with ``event=<event> `` since the mark (and after ``after``'s line)."""
        text = self.since()
        if after:
            text = text.split(f"event={after} ", 1)[1] if f"event={after} " in text else ""
        return next((ln for ln in text.splitlines() if f"event={event} " in ln), None)

    @classmethod
    def when(cls, line: str) -> float:
        """The line's timestamp (wall clock, ms resolution)."""
        found = cls._TS.match(line)
        assert found, line
        return datetime.datetime.fromisoformat(found.group(1)).replace(tzinfo=datetime.UTC).timestamp()


def _field(line: str, key: str) -> int:
    found = re.search(rf"\b{key}=(\d+)", line)
    assert found, (key, line)
    return int(found.group(1))


@contextmanager
def pinging(box: Sandbox, src: str, dst_ip: str) -> Iterator[list[int]]:
    """A ping every 10 ms from ``src`` to ``dst_ip`` while the body runs; afterwards the list holds
    one number: the echo requests that got no reply (the last two, maybe in flight, left out)."""
    vm = box.vms()[src]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", vm.netns, "ping", "-n", "-i", str(PING_INTERVAL_S), "-W", "1", dst_ip],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    replied: set[int] = set()
    summary: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            if (seq := re.search(r"icmp_seq=(\d+)", text)) is not None:
                replied.add(int(seq.group(1)))
            elif "packets transmitted" in text:
                summary.append(text)

    reader = threading.Thread(target=read, name="ping-reader")
    reader.start()
    lost: list[int] = []
    try:
        wait_for(lambda: len(replied) >= 20, 10, f"{src} to reach {dst_ip}")
        yield lost
        time.sleep(1.0)  # a reply outstanding at the end is not a loss
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        reader.join(10)
    sent = int(summary[0].split()[0])
    lost.append(sum(1 for seq in range(1, sent - 1) if seq not in replied))


def _install(box: Sandbox, neighbours: int, ports: int) -> None:
    """Two VMs and ``ports - 2`` bare interfaces, their ports, then the neighbours in chunks."""
    for n in range(2):
        box.vm_add(HOST, f"rs{n}", _port_mac(n), f"{_port_ip(n)}/10", iface_id=f"rs-port-{n}")
    interfaces = []
    for n in range(2, ports):
        interfaces += ["--", "add-port", "br-int", f"rs{n}", "--", "set", "interface", f"rs{n}",
                       "type=internal", f"external_ids:iface-id=rs-port-{n}"]  # fmt: skip
    if interfaces:
        box.exec(HOST, ["ovs-vsctl", "--timeout=60", *interfaces])
    port_states = [gs.port(f"rs-port-{n}", VPC, SUBNET, _port_ip(n), _port_mac(n)) for n in range(ports)]
    with controller_channel(box, HOST) as send:
        replies = send(gs.goal_state_v2(*context_states(), *port_states), timeout=120)
        for start in range(0, neighbours, CHUNK):
            count = min(CHUNK, neighbours - start)
            replies += send(gs.goal_state_v2(*neighbor_states(start, count)), timeout=600)
    statuses = {gs.pb.OperationStatus.Name(s.operation_status) for r in replies for s in r.operation_statuses}
    assert statuses == {"SUCCESS"}, statuses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restart", description=__doc__)
    p.add_argument("--neighbours", type=int, default=50_000)
    p.add_argument("--ports", type=int, default=100)
    p.add_argument(
        "--quick", action="store_true", help="2,000 neighbours and 10 ports (the test suite's run)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.neighbours, args.ports = 2_000, 10
    if args.ports < 2:
        p.error("--ports: at least the two VMs")
    with sandbox("acab-rs", hosts=0) as box:
        box.host_up(HOST)  # shipped defaults: INFO, so the resync line is there to read
        _install(box, args.neighbours, args.ports)
        ovs = box.ovs(HOST)
        before = _flows(box)
        print(f"installed: neighbours={args.neighbours} ports={args.ports} flows={len(before)}", flush=True)
        log = AgentLog(box)
        load = os.getloadavg()[0]  # a shared machine's other work shows in every figure

        # (a) the agent killed and started again
        log.mark()
        with pinging(box, "rs0", _port_ip(1)) as agent_lost:
            killed = time.time()
            box.restart_agent(HOST, sig=signal.SIGKILL)
            wait_for(lambda: log.line("ready") is not None, 120, "the agent's event=ready")
        starting, ready, resync = log.line("starting"), log.line("ready"), log.line("resync")
        assert starting is not None and ready is not None and resync is not None, log.since()
        agent_ms = (AgentLog.when(ready) - killed) * 1e3
        loaded_ms = (AgentLog.when(starting) - killed) * 1e3  # interpreter up, state loaded
        rewritten = _field(resync, "added") + _field(resync, "deleted")
        assert _flows(box) == before, "br-int differs after the agent's restart"
        print(f"agent SIGKILL → READY   {agent_ms:9.1f} ms  (state loaded at {loaded_ms:.0f} ms, "
              f"resync {_field(resync, 'us') / 1e3:.1f} ms, "
              f"flows rewritten {rewritten}, pings lost {agent_lost[0]})", flush=True)  # fmt: skip

        # (b) ovs-vswitchd restarted: the agent replays into the empty switch
        log.mark()
        with pinging(box, "rs0", _port_ip(1)) as switch_lost:
            stopped = time.time()
            ovs.restart_vswitchd()
            wait_for(
                lambda: log.line("resync", after="openflow_reconnected") is not None,
                120,
                "the agent's replay into the restarted ovs-vswitchd",
            )
            wait_for(lambda: _flow_count(box) == len(before), 60, "all flows back")
        replayed = log.line("resync", after="openflow_reconnected")
        assert replayed is not None
        switch_ms = (AgentLog.when(replayed) - stopped) * 1e3
        assert _flows(box) == before, "br-int differs after the ovs-vswitchd restart"
        print(f"vswitchd restart → flows {switch_ms:9.1f} ms  (replay {_field(replayed, 'us') / 1e3:.1f} ms, "
              f"pings lost {switch_lost[0]})", flush=True)  # fmt: skip

    print(
        f"RESULT neighbours={args.neighbours} ports={args.ports} flows={len(before)} "
        f"agent_restart_ms={agent_ms:.0f} agent_state_loaded_ms={loaded_ms:.0f} "
        f"agent_resync_ms={_field(resync, 'us') / 1e3:.0f} "
        f"flows_rewritten={rewritten} agent_restart_pings_lost={agent_lost[0]} "
        f"vswitchd_restart_ms={switch_ms:.0f} vswitchd_replay_ms={_field(replayed, 'us') / 1e3:.0f} "
        f"vswitchd_restart_pings_lost={switch_lost[0]} {environment()} load1={load:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
