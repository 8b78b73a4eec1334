"""A real part missing in CI fails the tests of the module that needs it, not the collection."""

from __future__ import annotations

import types

import pytest

from tests.support import parts


def test_missing_at_import_fails_that_modules_tests_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(parts, "_MISSING", {})
    exec(
        compile("missing('a switch')", "fake_test_module.py", "exec"),
        {"__name__": "fake_mod", "missing": parts.missing},
    )
    item = types.SimpleNamespace(module=types.SimpleNamespace(__name__="fake_mod"))
    with pytest.raises(pytest.fail.Exception, match=r"a switch \(required in CI\)"):
        parts.fail_if_missing(item)  # type: ignore[arg-type]
    other = types.SimpleNamespace(module=types.SimpleNamespace(__name__="other_mod"))
    parts.fail_if_missing(other)  # type: ignore[arg-type]  # the other modules' tests run


def test_missing_inside_a_test_fails_it_at_once_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        parts.missing("a switch")


def test_missing_skips_outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        parts.missing("a switch")
