"""`python -m bench.restart --quick` keeps working and keeps its functional promises: a SIGKILLed
agent comes back without rewriting a flow and without losing a ping, a restarted ovs-vswitchd
gets every flow back (the benchmark compares `br-int` before and after both), and it leaves no
namespace behind. Its times are figures, not asserted here."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration
require_ovs()


def _bench_netns() -> set[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    return {n for n in names if n.startswith("acab-rs")}


def test_quick_run() -> None:
    before = _bench_netns()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.restart", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=pathlib.Path(__file__).resolve().parents[2],  # bench/ runs from the checkout, not installed
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    result = dict(field.split("=", 1) for field in last.split()[1:])
    assert result["neighbours"] == "2000" and result["ports"] == "10"
    assert int(result["flows"]) > 4000
    assert result["flows_rewritten"] == "0"
    assert result["agent_restart_pings_lost"] == "0"
    for key in (
        "agent_restart_ms",
        "vswitchd_restart_ms",
        "vswitchd_restart_pings_lost",
        "ovs",
        "kernel",
        "cores",
    ):
        assert result[key], key
    assert _bench_netns() <= before
