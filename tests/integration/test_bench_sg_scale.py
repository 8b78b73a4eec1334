"""`python -m bench.sg_scale` keeps working, small: 3 ports, 20 remote members, 2 samples, the
agent and OVN (as scripts/setup.sh installs it), plus a small scale point; it ends with a RESULT
line naming both sides' figures and leaves no namespace of its own behind."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.support.parts import missing, require_ovs

pytestmark = pytest.mark.integration

require_ovs()
if shutil.which("ovn-northd") is None or shutil.which("ovn-controller") is None:
    missing("OVN (ovn-central, ovn-host) is not installed")


def _bench_netns() -> set[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    return {n for n in names if n.startswith(("acab-sg", "acasgo"))}


def test_small_run_reports_both_sides() -> None:
    before = _bench_netns()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.sg_scale", "--ports", "3", "--members", "20", "--samples", "2",
         "--scale-point", "30"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=pathlib.Path(__file__).resolve().parents[2],  # bench/ runs from the checkout, not installed
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    result = dict(field.split("=", 1) for field in last.split()[1:])
    for side in ("agent", "ovn"):
        assert float(result[f"{side}_policy_ms"]) > 0 and int(result[f"{side}_flows"]) > 0
        assert float(result[f"{side}_rule_add_p99_ms"]) > 0
        assert int(result[f"scale_{side}_flows"]) > int(result[f"{side}_flows"])
    assert float(result["flows_vs_ovn_ratio"]) > 0
    assert _bench_netns() == before
