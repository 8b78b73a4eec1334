"""docs/pipeline.md must describe exactly the pipeline declared in agent/planner/pipeline.py."""

from __future__ import annotations

import pathlib
import re

from agent.planner.cookies import Kind
from agent.planner.pipeline import Flag, Reg, Table

DOC = (pathlib.Path(__file__).parents[2] / "docs" / "pipeline.md").read_text()


def test_every_table_is_documented_with_its_number_and_nothing_else() -> None:
    documented = {(int(n), name) for n, name in re.findall(r"^### Table (\d+) `(\w+)`", DOC, re.M)}
    assert documented == {(t.value, t.name) for t in Table}


def test_registers_flags_and_cookie_kinds_are_documented() -> None:
    for name, fld in vars(Reg).items():
        if not name.startswith("_"):
            assert f"| `{fld.ofctl_name}` | `{name}` |" in DOC
    for flag in Flag:
        assert flag.name in DOC
    for kind in Kind:
        assert f"`{kind.name}` ({kind.value}" in DOC


def test_table_ids_do_not_overlap_and_increase() -> None:
    values = [t.value for t in Table]
    assert values == sorted(set(values))
