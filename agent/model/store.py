"""Accepted desired state on disk (SQLite, WAL), durable before the reply or the Kafka commit.

A restarted agent reloads it and reprograms from it without waiting for the controller.
``resource`` holds one JSON row per held resource (readable with the sqlite3 shell);
``journal`` holds goal states exactly as they arrived, appended before the reply; ``tombstone``
holds the revisions deleted resources were deleted at, folded like the rows.
Appending one blob costs milliseconds where JSON rows for a 10,000-neighbour message cost
~75 ms, so the hot path only journals; the agent folds journaled messages into ``resource``
rows when it is idle (``materialize``), and a restart replays what was not folded yet through
the same ``DesiredState.apply`` the live path uses (``recover``).
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

from agent.model.decode import Wire, decode_wire
from agent.model.resources import RESOURCE_CLASSES, Resource, ResourceType
from agent.model.state import MAX_TOMBSTONES, DesiredState

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


# Deleted resources' revisions (``DesiredState.tombstones``); rowid order is the order they were
# folded in, so the newest ``MAX_TOMBSTONES`` are the ones kept.
_TOMBSTONE_TABLE = (
    "CREATE TABLE IF NOT EXISTS tombstone ("
    " type INTEGER NOT NULL, id TEXT NOT NULL, revision INTEGER NOT NULL, PRIMARY KEY (type, id))"
)


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
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal ("
            " seq INTEGER PRIMARY KEY, version INTEGER NOT NULL, host_ip TEXT NOT NULL, body BLOB NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute(_TOMBSTONE_TABLE)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def load(self) -> dict[ResourceType, dict[str, Resource]]:
        out: dict[ResourceType, dict[str, Resource]] = {t: {} for t in ResourceType}
        for rtype, rid, body in self._db.execute("SELECT type, id, body FROM resource"):
            t = ResourceType(rtype)
            out[t][rid] = from_json(t, body)
        return out

    def load_tombstones(self) -> dict[tuple[ResourceType, str], int]:
        rows = self._db.execute(
            "SELECT type, id, revision FROM tombstone ORDER BY rowid DESC LIMIT ?", (MAX_TOMBSTONES,)
        ).fetchall()
        return {(ResourceType(rtype), rid): revision for rtype, rid, revision in reversed(rows)}

    def journal(self, wire: Wire) -> int:
        """Append a goal state as received (one durable transaction); its sequence number."""
        cur = self._db.execute(
            "INSERT INTO journal (version, host_ip, body) VALUES (?, ?, ?)",
            (wire.version, wire.host_ip, wire.raw),
        )
        return int(cur.lastrowid or 0)

    def journaled(self) -> list[tuple[int, Wire]]:
        rows = self._db.execute("SELECT seq, version, host_ip, body FROM journal ORDER BY seq")
        return [(seq, Wire(version, bytes(body), host_ip)) for seq, version, host_ip, body in rows]

    def materialize(
        self, state: DesiredState, keys: Iterable[tuple[ResourceType, str]], journal_through: int = 0
    ) -> None:
        """Rows for ``keys`` as ``state`` holds them now (absent: deleted, with its tombstone if it
        has one) and, in the same transaction, drop journal entries up to ``journal_through``
        (their effect is in the rows)."""
        upserts, deletes, tombstones, untombed = [], [], [], []
        for rtype, rid in keys:
            resource = state.get(rtype, rid)
            if resource is not None:
                upserts.append((int(rtype), rid, resource.revision, to_json(resource)))
                untombed.append((int(rtype), rid))  # held again: a tombstone is gone
                continue
            deletes.append((int(rtype), rid))
            revision = state.tombstones.get((rtype, rid))
            if revision is None:
                untombed.append((int(rtype), rid))
            else:
                tombstones.append((int(rtype), rid, revision))
        if not upserts and not deletes and not journal_through:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            if deletes:
                db.executemany("DELETE FROM resource WHERE type = ? AND id = ?", deletes)
            if upserts:
                db.executemany("INSERT OR REPLACE INTO resource VALUES (?, ?, ?, ?)", upserts)
            if untombed and db.execute("SELECT EXISTS (SELECT 1 FROM tombstone)").fetchone()[0]:
                db.executemany("DELETE FROM tombstone WHERE type = ? AND id = ?", untombed)
            if tombstones:
                db.executemany("INSERT OR REPLACE INTO tombstone VALUES (?, ?, ?)", tombstones)
                db.execute(
                    "DELETE FROM tombstone WHERE rowid <= "
                    "(SELECT rowid FROM tombstone ORDER BY rowid DESC LIMIT 1 OFFSET ?)",
                    (MAX_TOMBSTONES,),
                )
            if journal_through:
                db.execute("DELETE FROM journal WHERE seq <= ?", (journal_through,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()


def recover(store: Store) -> DesiredState:
    """The state held at the last reply: the rows and tombstones, then every journaled goal state
    replayed in order (deterministic: the same requests on the same state). Folded at once."""
    state = DesiredState(store.load(), store.load_tombstones())
    entries = store.journaled()
    if entries:
        changed = {
            (o.request.type, o.request.id)
            for _seq, wire in entries
            for o in state.apply(decode_wire(wire))
            if o.changed
        }
        store.materialize(state, changed, journal_through=entries[-1][0])
    return state
