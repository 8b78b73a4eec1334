"""Accepted desired state on disk (SQLite, WAL), written before the reply or the Kafka commit.

A restarted agent reloads it and reprograms from it without waiting for the controller.
Rows are JSON of the frozen resources, so the file is readable with the sqlite3 shell.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import pathlib
import sqlite3
import typing
from collections.abc import Iterable
from functools import cache
from typing import Any

from agent.model.resources import RESOURCE_CLASSES, Resource, ResourceType

SCHEMA_VERSION = 1


def _fields(value: Any) -> dict[str, Any]:
    """json's C encoder calls this for each dataclass it meets and walks the rest itself (tuples
    become lists, IntEnums ints): one Python call per object, no deep copies."""
    return {name: getattr(value, name) for name in value.__slots__}


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_fields)


def to_json(resource: Resource) -> str:
    return _ENCODER.encode(resource)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        return tuple(_build(item_type, x) for x in value)
    if dataclasses.is_dataclass(tp):
        hints = _hints(tp)  # type: ignore[arg-type]
        return tp(**{k: _build(hints[k], x) for k, x in value.items() if k in hints})  # type: ignore[operator]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    return value


def from_json(rtype: ResourceType, text: str) -> Resource:
    return _build(RESOURCE_CLASSES[rtype], json.loads(text))


class Store:
    """One SQLite file in the state directory; every goal state is one transaction."""

    def __init__(self, state_dir: str | pathlib.Path) -> None:
        path = pathlib.Path(state_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "desired-state.sqlite"
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS resource ("
            " type INTEGER NOT NULL, id TEXT NOT NULL, revision INTEGER NOT NULL, body TEXT NOT NULL,"
            " PRIMARY KEY (type, id))"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def load(self) -> dict[ResourceType, dict[str, Resource]]:
        out: dict[ResourceType, dict[str, Resource]] = {t: {} for t in ResourceType}
        for rtype, rid, body in self._db.execute("SELECT type, id, body FROM resource"):
            t = ResourceType(rtype)
            out[t][rid] = from_json(t, body)
        return out

    def write(
        self, upserts: Iterable[tuple[ResourceType, Resource]], deletes: Iterable[tuple[ResourceType, str]]
    ) -> None:
        rows = [(int(t), r.id, r.revision, to_json(r)) for t, r in upserts]
        gone = [(int(t), rid) for t, rid in deletes]
        if not rows and not gone:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            if gone:
                db.executemany("DELETE FROM resource WHERE type = ? AND id = ?", gone)
            if rows:
                db.executemany("INSERT OR REPLACE INTO resource VALUES (?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
