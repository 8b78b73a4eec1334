"""`python -m bench.scale --quick` keeps working: 3 hosts, 150 ports, both transports, well under
two minutes; it must end with a RESULT line and leave its CSV, summary and plots behind, and
nothing else (no namespace of its sandboxes survives it)."""

from __future__ import annotations

import csv
import pathlib
import subprocess
import sys

import pytest

from tests.support.parts import missing, require_ovs, require_tansu

pytestmark = pytest.mark.integration

require_ovs()
require_tansu()
try:
    import matplotlib  # noqa: F401  (bench.scale's plots: the `bench` extra)
except ImportError:
    missing("matplotlib is not installed (pip install -e '.[bench]')")


def _bench_netns() -> set[str]:
    """Namespaces of bench.scale's sandboxes (prefix acasc)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    return {n for n in names if n.startswith("acasc")}


def test_quick_run(tmp_path: pathlib.Path) -> None:
    before = _bench_netns()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--quick", "--no-progress", "--out", str(tmp_path)],
        cwd=pathlib.Path(__file__).resolve().parents[2],  # bench/ runs from the checkout, not installed
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard, not a speed check: bench.scale prints the figures
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    result = dict(field.split("=", 1) for field in last.split()[1:])
    for transport in ("grpc", "kafka"):
        assert float(result[f"{transport}_reply_p99_ms"]) > 0
        assert float(result[f"{transport}_burst_ports_per_s"]) > 0
        assert result[f"{transport}_pings_unanswered"] == "0"
        assert result[f"{transport}_slowest_stage"]
    assert result["ports"] == "150"

    for name in ("scale.csv", "summary.txt", "summary.csv", "latency_vs_neighbours.png",
                 "resources_vs_neighbours.png"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0, name
    with (tmp_path / "scale.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for transport in ("grpc", "kafka"):
        replies = [
            r
            for r in rows
            if r["kind"] == "reply" and r["workload"] == "grow" and r["transport"] == transport
        ]
        # Every new port: one reply from its host and one from every other host holding the VPC.
        assert len(replies) == 150 * 3 - 3
        assert {r["status"] for r in replies if r["role"] == "neighbour"} == {"SUCCESS"}
    assert "slowest stage is" in proc.stdout
    assert _bench_netns() <= before


def test_shared_topic_mode_prints_both_ways_in_one_run(tmp_path: pathlib.Path) -> None:
    """`--transport shared`: per-host topics and the VPC's topic side by side, 3 hosts, 12 ports."""
    before = _bench_netns()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scale", "--transport", "shared", "--hosts", "3", "--ports", "12",
         "--no-progress", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, not a speed check
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = dict(field.split("=", 1) for field in proc.stdout.strip().splitlines()[-1].split()[1:])
    assert result["shared_publishes_per_change"] == "1.00"
    assert float(result["perhost_publishes_per_change"]) > 1  # one per host holding the VPC
    for key in ("shared_vs_per_host_ratio_all_hosts_p99", "shared_vs_per_host_ratio_publish_p50",
                "shared_all_hosts_applied_p99_ms", "perhost_all_hosts_applied_p99_ms"):  # fmt: skip
        assert float(result[key]) > 0, key
    with (tmp_path / "scale.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["kind"] == "reply" and r["workload"] == "grow"]
    for mode in ("perhost", "shared"):  # the same replies both ways: one per host the change names
        assert len([r for r in rows if r["transport"] == mode]) == 12 * 3 - 3
    assert _bench_netns() <= before
