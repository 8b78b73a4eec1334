"""Shared pieces of the benchmarks: a throw-away sandbox, goal-state generators, statistics."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pathlib
import platform
import sqlite3
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator

from agent._pb import goalstate_pb2_grpc
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox

VPC, SUBNET, VNI, CIDR = "vpc-bench", "subnet-bench", 5000, "10.128.0.0/10"


@contextlib.contextmanager
def sandbox(prefix: str, hosts: int = 1) -> Iterator[Sandbox]:
    """A private sandbox with ``hosts`` agents at the shipped defaults (INFO logging included),
    always torn down."""
    with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as root:
        box = Sandbox(pathlib.Path(root) / "sandbox", prefix=prefix)
        try:
            for i in range(1, hosts + 1):
                box.host_up(f"host{i}")
            yield box
        finally:
            box.down()


@contextlib.contextmanager
def controller_channel(box: Sandbox, host: str) -> Iterator[Callable[..., list]]:
    """``send(message, timeout=30)`` over one gRPC channel kept open, as a controller keeps it
    (v2 stream per message); warmed with an empty goal state so timings exclude connecting."""
    with box.channel(host) as channel:
        stub = goalstate_pb2_grpc.GoalStateProvisionerStub(channel)

        def send(message: object, timeout: float = 30.0) -> list:
            return list(stub.PushGoalStatesStream(iter([message]), timeout=timeout))

        send(gs.pb.GoalStateV2(format_version=1))
        yield send


# tool → (the command that prints its version, the word before the version in its output)
_VERSIONS = {
    "ovn": (["ovn-controller", "--version"], "ovn-controller"),
    "kea": (["kea-dhcp4", "-V"], None),
    "dnsmasq": (["dnsmasq", "--version"], "version"),
}


def _version(cmd: list[str], before: str | None) -> str:
    """The version a tool prints (``before``: the word preceding it; None: its first line whole)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    words = out.split()
    if before is None:
        return out.splitlines()[0].strip() if out.strip() else "unknown"
    return words[words.index(before) + 1] if before in words[:-1] else "unknown"


def environment(state_dir: str | None = None, tools: tuple[str, ...] = ()) -> str:
    """What a run ran against, as ``key=value`` pairs: OVS, kernel, cores, the versions of the
    peer ``tools`` it compares with (``ovn``, ``kea``, ``dnsmasq``), and with ``state_dir`` the
    SQLite version and file system the agent's journal is fsynced on (tmpfs makes it free)."""
    pairs = {
        "ovs": _version(["ovs-vswitchd", "--version"], "vSwitch)"),
        **{tool: _version(*_VERSIONS[tool]) for tool in tools},
        "kernel": platform.release(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
    }
    if state_dir is not None:
        fs = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE", "-T", state_dir], capture_output=True, text=True
        )
        pairs |= {"sqlite": sqlite3.sqlite_version, "state_fs": fs.stdout.strip() or "unknown"}
    return " ".join(f"{k}={v}" for k, v in pairs.items())


def neighbor_states(start: int, count: int, remote_hosts: int = 50) -> list:
    """``count`` L2 neighbours of the bench subnet, spread over ``remote_hosts`` remote hosts."""
    base = int(ipaddress.IPv4Address("10.128.0.0"))
    states = []
    for i in range(start, start + count):
        ip = str(ipaddress.IPv4Address(base + 16 + i))
        mac = f"fa:16:3e:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"
        host = f"172.30.{(i % remote_hosts) // 250}.{(i % remote_hosts) % 250 + 1}"
        states.append(gs.neighbor(f"nb-{i}", VPC, SUBNET, ip, mac, host))
    return states


def context_states() -> list:
    return [gs.vpc(VPC, VNI, CIDR), gs.subnet(SUBNET, VPC, CIDR, VNI, "10.128.0.1", op=gs.CREATE)]


def agent_rss_mb(box: Sandbox, host: str) -> float:
    return rss_mb(box.state()["hosts"][host]["agent_pid"])


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """``pid``'s resident memory now, or with ``field="VmHWM"`` its peak since it started, in MiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], pct: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(pct) - 1]
