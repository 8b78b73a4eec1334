"""Suite-wide hooks."""

from __future__ import annotations

import pytest

from tests.support.parts import fail_if_missing


def pytest_runtest_setup(item: pytest.Item) -> None:
    fail_if_missing(item)
