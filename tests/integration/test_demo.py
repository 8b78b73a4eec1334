"""README's first command, run exactly as typed: the demo must work from this checkout."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration

require_ovs()

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_readme_demo_command_runs_as_typed() -> None:
    readme = (ROOT / "README.md").read_text().splitlines()
    command = next(line for line in readme if "scripts/demo.sh" in line).split("#")[0].strip()
    assert command == "bash scripts/demo.sh"  # no sudo: a fresh Debian running as root has none
    done = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "DEMO OK: every ping answered" in done.stdout
