"""Traffic and flow-table helpers for the integration tests: pings, captures, flow dumps."""

from __future__ import annotations

import contextlib
import pathlib
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator

from agent.planner.cookies import Kind, cookie, is_ours
from agent.sandbox.hosts import Sandbox


def received(out: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def assert_reaches(sb: Sandbox, src: str, ip: str) -> None:
    """A warm-up (the first packet over VXLAN may wait for the underlay neighbour), then no loss."""
    warm = sb.vm_exec(src, ["ping", "-c", "3", "-i", "0.3", "-W", "2", ip])
    assert received(warm.stdout)[1] >= 1, f"{src} -> {ip} warm-up: {warm.stdout}{warm.stderr}"
    strict = sb.vm_exec(src, ["ping", "-c", "3", "-i", "0.2", "-W", "1", ip])
    sent, got = received(strict.stdout)
    assert got == sent, f"{src} -> {ip}: {strict.stdout}{strict.stderr}"


def assert_unreachable(sb: Sandbox, src: str, ip: str) -> None:
    proc = sb.vm_exec(src, ["ping", "-c", "2", "-i", "0.3", "-W", "1", ip])
    assert proc.returncode != 0 and received(proc.stdout)[1] == 0, f"{src} reached {ip}: {proc.stdout}"


def flush_neighbours(sb: Sandbox, *vms: str) -> None:
    for vm in vms:
        sb.vm_exec(vm, ["ip", "neigh", "flush", "dev", "eth0"], check=True)


_TIMESTAMP = re.compile(r"\d{2}:\d{2}:\d{2}\.\d+ ")


@contextlib.contextmanager
def capture(
    netns: str, dev: str, bpf: str, extra: tuple[str, ...] = (), verbose: bool = False
) -> Iterator[list[str]]:
    """tcpdump on ``dev`` inside ``netns`` while the body runs; afterwards the list holds the
    decoded packets (``tcpdump -r -nn -e``, with ``-v`` when verbose: IP TTLs), one string per
    packet with continuation lines joined."""
    with tempfile.TemporaryDirectory(prefix="acat-cap-") as tmp:
        pcap = pathlib.Path(tmp) / "cap.pcap"
        cmd = ["ip", "netns", "exec", netns, "tcpdump", "-i", dev, "-nn", "-U", *extra, "-w", str(pcap), bpf]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        packets: list[str] = []
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()  # "listening on <dev> ..." once the socket is open
            assert "listening on" in line, line
            yield packets
            time.sleep(0.3)  # let the last packets reach the capture
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        decoded = subprocess.run(
            ["tcpdump", "-r", str(pcap), "-nn", "-e", *(["-v"] if verbose else [])],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for text in decoded.splitlines():
            if _TIMESTAMP.match(text) or not packets:
                packets.append(text.strip())
            elif text.strip():  # an encapsulated frame, decoded on the next line(s)
                packets[-1] += " | " + text.strip()


# ---------------------------------------------------------------------------- flow helpers
def dump_cookies(sb: Sandbox, host: str) -> Counter[int]:
    """Every flow on the host's br-int, counted by cookie."""
    out = sb.exec(host, ["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "br-int"]).stdout
    return Counter(int(m.group(1), 16) for m in re.finditer(r"cookie=(0x[0-9a-f]+)", out))


def dump_flows(sb: Sandbox, host: str) -> list[str]:
    """The host's flows without their counters, sorted: comparable across time."""
    out = sb.exec(host, ["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows", "br-int"]).stdout
    return sorted(line.strip() for line in out.splitlines() if "cookie=" in line)


def port_state(sb: Sandbox, host: str, port_id: str) -> str | None:
    return next((p["state"] for p in sb.control(host, "ports") if p["id"] == port_id), None)


def assert_flow_table_clean(sb: Sandbox, host: str, routers: tuple[str, ...] = ()) -> None:
    """The switch holds exactly the agent's flows, and every cookie belongs to a live owner."""
    on_switch = dump_cookies(sb, host)
    agent_flows = sb.control(host, "flows")
    assert on_switch == Counter(int(f["cookie"], 16) for f in agent_flows)
    assert all(is_ours(c) for c in on_switch)
    ports = sb.control(host, "ports")
    live = {cookie(Kind.BASE, "base")}
    live |= {cookie(Kind.PORT, p["id"]) for p in ports}
    live |= {cookie(Kind.DHCP, f"port:{p['id']}") for p in ports}  # a port's DHCP steering
    live |= {cookie(Kind.DHCP, f"subnet:{s}") for p in ports for s in p["subnets"]}  # DHCP server id ARP
    live |= {cookie(Kind.NEIGHBOR, n["id"]) for n in sb.control(host, "neighbours")}
    live |= {cookie(Kind.SEGMENT, str(p["segment"])) for p in ports if p["ofport"]}
    live |= {cookie(Kind.ROUTER, r) for r in routers}
    if routers:  # the route fast path's re-entry flow of each routed segment
        segments = {p["segment"] for p in ports} | {
            s for n in sb.control(host, "neighbours") for s in n["segments"]
        }
        live |= {cookie(Kind.ROUTE, str(s)) for s in segments}
    assert set(on_switch) <= live, {f"{c:#x}" for c in set(on_switch) - live}
