"""Accepted desired state on disk (SQLite, WAL), durable before the reply or the Kafka commit.

A restarted agent reloads it and reprograms from it without waiting for the controller.
``resource`` holds one JSON row per held resource (readable with the sqlite3 shell);
``journal`` holds goal states exactly as they arrived, appended before the reply; ``tombstone``
holds the revisions deleted resources were deleted at, folded like the rows; ``subscription``
holds the shared Kafka topics the controller subscribed this host to (``PushNodeSubscribeInfo``),
so a restarted agent consumes them again from its group's committed offsets.
Appending one blob costs milliseconds where JSON rows for a 10,000-neighbour message cost
~75 ms, so the hot path only journals; the agent folds journaled messages into ``resource``
rows when it is idle (``materialize``), and a restart replays what was not folded yet through
the same ``DesiredState.apply`` the live path uses (``recover``).

Durability: WAL with ``synchronous=FULL``. With NORMAL, SQLite syncs the WAL only at checkpoints,
so a power loss or kernel crash takes back commits made since: goal states already answered or
committed in Kafka, which the controller will not resend. FULL fsyncs the WAL at every commit, so
a journal append is on disk when ``journal`` returns. A failed write (a full disk) leaves no
transaction open: the next append succeeds once there is room.

Start-up never fails on the file's contents: a file SQLite cannot read, or one written by a
newer schema, is moved aside with its -wal/-shm (``<name>.quarantined-<UTC time>``, kept for
inspection) and the store starts empty, for the controller's resync (AGENT_RESTARTED) to refill;
a single row or journal entry that does not decode or apply is skipped and logged, the rest
loads. ``Store.recovery`` says what was left out (``acactl status``: ``state_recovery``).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import pathlib
import sqlite3
import time
import typing
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

from agent.model.decode import Wire, decode_wire
from agent.model.resources import RESOURCE_CLASSES, Resource, ResourceType
from agent.model.state import MAX_TOMBSTONES, DesiredState

log = logging.getLogger("aca.store")

SCHEMA_VERSION = 2
DB_NAME = "desired-state.sqlite"
# Primary result codes (an error's low byte) that say the file itself cannot be used:
# SQLITE_CORRUPT, SQLITE_FORMAT, SQLITE_NOTADB. Others (busy, permissions, I/O, a full disk)
# say nothing about its contents, so they never cause a quarantine.
_UNUSABLE_FILE = {11, 24, 26}


def _fields(value: Any) -> dict[str, Any]:
    """json's C encoder calls this for each dataclass it meets and walks the rest itself (tuples
    become lists, IntEnums ints): one Python call per object, no deep copies."""
    return {name: getattr(value, name) for name in value.__slots__}


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_fields)


def to_json(resource: Resource) -> str:
    return _ENCODER.encode(resource)


@cache
def _decoder(tp: Any) -> Callable[[Any], Any] | None:
    """A function turning a JSON value into a ``tp`` value, built once per type from its hints;
    None when the JSON value is already the value (str, int, bool). A restart decodes every
    row, so the type hints are walked here once instead of per row and field."""
    if typing.get_origin(tp) is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        item = _decoder(item_type)
        if item is None:
            return tuple
        return lambda value: tuple([item(x) for x in value])
    if dataclasses.is_dataclass(tp):
        return _dataclass_decoder(tp)  # type: ignore[arg-type]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_decoder(tp)
    return None


def _enum_decoder(tp: type[enum.Enum]) -> Callable[[Any], Any]:
    """A dict lookup (calling an Enum class is the slow path); unknown values raise as before."""
    members = tp._value2member_map_

    def member(value: Any) -> Any:
        found = members.get(value)
        return tp(value) if found is None else found

    return member


def _dataclass_decoder(cls: type) -> Callable[[dict[str, Any]], Any]:
    hints = typing.get_type_hints(cls)
    known = frozenset(hints)
    nested = [(name, decode) for name, tp in hints.items() if (decode := _decoder(tp)) is not None]

    def build(value: dict[str, Any]) -> Any:
        if not known.issuperset(value):  # a field this agent does not have: left out
            value = {k: x for k, x in value.items() if k in known}
        for name, decode in nested:
            if name in value:
                value[name] = decode(value[name])
        return cls(**value)

    return build


def from_json(rtype: ResourceType, text: str) -> Resource:
    build = _decoder(RESOURCE_CLASSES[rtype])
    assert build is not None
    return build(json.loads(text))


# Deleted resources' revisions (``DesiredState.tombstones``); rowid order is the order they were
# folded in, so the newest ``MAX_TOMBSTONES`` are the ones kept.
_TOMBSTONE_TABLE = (
    "CREATE TABLE IF NOT EXISTS tombstone ("
    " type INTEGER NOT NULL, id TEXT NOT NULL, revision INTEGER NOT NULL, PRIMARY KEY (type, id))"
)


# What each schema version adds to the one before, run in order on a file written by an older
# agent (and on a new file, after the version 1 tables): the upgrade path is the only path.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("CREATE TABLE IF NOT EXISTS subscription (topic TEXT PRIMARY KEY, key TEXT NOT NULL)",),
}


@dataclasses.dataclass
class Recovery:
    """What start-up could not use from the state directory."""

    quarantined: str = ""  # where an unusable database file was moved, if one was
    reason: str = ""
    rows_skipped: int = 0
    journal_entries_skipped: int = 0


class _Unusable(Exception):
    """The database file cannot be used as it is (unreadable, or from a newer schema)."""


class Store:
    """One SQLite file in the state directory; every goal state is one transaction."""

    def __init__(self, state_dir: str | pathlib.Path) -> None:
        path = pathlib.Path(state_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / DB_NAME
        self.recovery = Recovery()
        self._unfolded_at_start: set[tuple[ResourceType, str]] = set()  # see recover
        try:
            self._db = self._open()
        except _Unusable as exc:
            self._db = self._quarantine(str(exc))

    def _open(self) -> sqlite3.Connection:
        """Check the file, then connect and create what is missing (nothing is written to a file
        that already has it all)."""
        stored = self._check() if self.path.exists() else None
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit: see the module doc
            db.execute(
                "CREATE TABLE IF NOT EXISTS resource ("
                " type INTEGER NOT NULL, id TEXT NOT NULL, revision INTEGER NOT NULL, body TEXT NOT NULL,"
                " PRIMARY KEY (type, id))"
            )
            db.execute(
                "CREATE TABLE IF NOT EXISTS journal ("
                " seq INTEGER PRIMARY KEY, version INTEGER NOT NULL, host_ip TEXT NOT NULL,"
                " body BLOB NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(_TOMBSTONE_TABLE)
            if stored != SCHEMA_VERSION:
                _migrate(db, stored)
        except BaseException:
            db.close()
            raise
        return db

    def _check(self) -> int | None:
        """The file's schema_version, or ``_Unusable`` if SQLite cannot read every page of it or
        a newer agent wrote it. Read-only: a read-write connection closed on a broken file may
        delete or checkpoint its -wal, which must stay as it was for inspection."""
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            # Reads every page (~15 ms per 20 MB); answers "ok" or the first problem it found,
            # e.g. "Page 7: btreeInitPage() returns error code 11".
            check = db.execute("PRAGMA quick_check(1)").fetchone()
            if check != ("ok",):
                raise _Unusable(f"quick_check: {str(check[0] if check else 'no answer').splitlines()[-1]}")
            stored = _schema_version(db)
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode & 0xFF in _UNUSABLE_FILE:
                raise _Unusable(f"{exc.sqlite_errorname}: {exc}") from exc
            raise
        finally:
            db.close()
        if stored is not None and stored > SCHEMA_VERSION:
            raise _Unusable(f"schema_version {stored} is newer than this agent's {SCHEMA_VERSION}")
        return stored

    def _quarantine(self, reason: str) -> sqlite3.Connection:
        """Move the database file (with its -wal and -shm) aside, keep it, and open an empty one."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.quarantined-{stamp}")
        n = 0
        while target.exists():  # twice in one second
            n += 1
            target = self.path.with_name(f"{self.path.name}.quarantined-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):  # SQLite finds <name>-wal beside a quarantined <name>
            source = pathlib.Path(f"{self.path}{suffix}")
            if source.exists():
                source.rename(f"{target}{suffix}")
        log.error("event=state_quarantined path=%s reason=%s", target, reason)
        self.recovery.quarantined, self.recovery.reason = str(target), reason
        return self._open()

    def quarantine(self, reason: str) -> None:
        """The open file turned out unreadable: set it aside and carry on with an empty one."""
        self._db.close()
        self._db = self._quarantine(reason)

    def load(self) -> dict[ResourceType, dict[str, Resource]]:
        out: dict[ResourceType, dict[str, Resource]] = {t: {} for t in ResourceType}
        resource_type = _enum_decoder(ResourceType)
        for rtype, rid, body in self._db.execute("SELECT type, id, body FROM resource"):
            try:
                t = resource_type(rtype)
                out[t][rid] = from_json(t, body)
            except Exception as exc:  # one bad row must not cost the others
                self._skip_row(rtype, rid, exc)
        return out

    def load_tombstones(self) -> dict[tuple[ResourceType, str], int]:
        rows = self._db.execute(
            "SELECT type, id, revision FROM tombstone ORDER BY rowid DESC LIMIT ?", (MAX_TOMBSTONES,)
        ).fetchall()
        return {(ResourceType(rtype), rid): revision for rtype, rid, revision in reversed(rows)}

    def _skip_row(self, rtype: object, rid: object, exc: Exception) -> None:
        name = ResourceType(rtype).name if rtype in ResourceType._value2member_map_ else rtype
        log.error("event=state_row_skipped type=%s id=%s error=%r", name, rid, exc)
        self.recovery.rows_skipped += 1

    def journal(self, wire: Wire) -> int:
        """Append a goal state as received (one transaction, fsynced); its sequence number.

        A failure (SQLITE_FULL on a full disk, an I/O error) raises and leaves no transaction
        open, so the next append works once the cause is gone."""
        try:
            cur = self._db.execute(
                "INSERT INTO journal (version, host_ip, body) VALUES (?, ?, ?)",
                (wire.version, wire.host_ip, wire.raw),
            )
        except sqlite3.Error:
            self._end_failed_transaction()
            raise
        return int(cur.lastrowid or 0)

    def _end_failed_transaction(self) -> None:
        """SQLite rolls some failures back itself (SQLITE_FULL does); roll back what it left open."""
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def journaled(self) -> list[tuple[int, Wire]]:
        rows = self._db.execute("SELECT seq, version, host_ip, body FROM journal ORDER BY seq")
        return [(seq, Wire(version, body, host_ip)) for seq, version, host_ip, body in rows]

    def materialize(
        self, state: DesiredState, keys: Iterable[tuple[ResourceType, str]], journal_through: int = 0
    ) -> None:
        """Rows for ``keys`` as ``state`` holds them now (absent: deleted, with its tombstone if it
        has one) and, in the same transaction, drop journal entries up to ``journal_through``
        (their effect is in the rows)."""
        if self._unfolded_at_start:  # what recover could not fold: see there
            keys = self._unfolded_at_start.union(keys)
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
            self._end_failed_transaction()
            raise
        self._unfolded_at_start.clear()

    def subscriptions(self) -> dict[str, str]:
        """Shared topic → the record key that addresses this host on it."""
        return dict(self._db.execute("SELECT topic, key FROM subscription ORDER BY topic").fetchall())

    def set_subscription(self, topic: str, key: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO subscription VALUES (?, ?)", (topic, key))

    def drop_subscription(self, topic: str) -> None:
        self._db.execute("DELETE FROM subscription WHERE topic = ?", (topic,))

    def close(self) -> None:
        self._db.close()


def _migrate(db: sqlite3.Connection, stored: int | None) -> None:
    """From schema ``stored`` (None: a new file, which has version 1's tables by now) up to
    ``SCHEMA_VERSION``, recorded in the same transaction: a crash midway leaves the file at its
    old version, upgraded again at the next start."""
    db.execute("BEGIN")
    try:
        for version in range((stored or 1) + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version]:
                db.execute(statement)
            if stored is not None:
                log.info("event=state_schema_upgraded from=%d to=%d", stored, version)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _schema_version(db: sqlite3.Connection) -> int | None:
    """The schema_version the file was written with; None for a new file."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        return None
    try:
        return int(row[0])
    except ValueError:
        raise _Unusable(f"schema_version {row[0]!r} is not a number") from None


def recover(store: Store) -> DesiredState:
    """The state held at the last reply: the rows and tombstones, then every journaled goal state
    replayed in order (deterministic: the same requests on the same state). Folded at once.

    A journal entry that fails to decode or apply is skipped (what it applied before failing
    stays). A file whose tables cannot be read is quarantined. When the fold fails (a full
    disk), the journal keeps the entries and the store folds their resources with the next
    ``materialize``, so the core's later fold (which trims the journal) does not lose them."""
    try:
        rows, tombstones, entries = store.load(), store.load_tombstones(), store.journaled()
    except sqlite3.DatabaseError as exc:  # passed quick_check, yet its tables do not read
        store.quarantine(f"{type(exc).__name__}: {exc}")
        rows, tombstones, entries = store.load(), {}, []
    state = DesiredState(rows, tombstones)
    changed: set[tuple[ResourceType, str]] = set()
    for seq, wire in entries:
        try:
            outcomes = state.apply(decode_wire(wire))
        except Exception as exc:  # one bad entry must not cost the others
            log.error("event=journal_entry_skipped seq=%d version=%s error=%r", seq, wire.version, exc)
            store.recovery.journal_entries_skipped += 1
            continue
        changed.update((o.request.type, o.request.id) for o in outcomes if o.changed)
    if entries:
        try:
            store.materialize(state, changed, journal_through=entries[-1][0])
        except sqlite3.Error as exc:
            log.error("event=store_fold_failed at=start resources=%d error=%r", len(changed), exc)
            store._unfolded_at_start |= changed
    return state
