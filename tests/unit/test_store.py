"""The state store's start-up and failure paths on real SQLite files: corrupt, truncated and
newer-schema files are quarantined, bad rows and journal entries skipped, a full database
fails one write and leaves the store usable."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sqlite3

import pytest

from agent.model import resources as r
from agent.model.decode import Wire, decode_wire
from agent.model.resources import ResourceType
from agent.model.state import DesiredState
from agent.model.store import DB_NAME, SCHEMA_VERSION, Store, from_json, recover, to_json
from agent.sandbox import goalstates as gs
from agent.state_dir_lock import StateDirInUse, lock_state_dir

HOST = "172.31.0.11"
BASE = (gs.vpc("v1", 100), gs.subnet("s1", "v1", "10.0.1.0/24", 100))


def _wire(*states) -> Wire:
    return Wire(2, gs.goal_state_v2(*states, host_ip=HOST).SerializeToString(), HOST)


def _port(n: int):
    return gs.port(f"p{n}", "v1", "s1", f"10.0.1.{n}", f"fa:16:3e:00:00:{n:02x}")


def _filled_store(state_dir: pathlib.Path, ports: int = 200) -> DesiredState:
    """A store holding ``ports`` ports as rows (several pages), closed again."""
    store = Store(state_dir)
    store.journal(_wire(*BASE, *(_port(n) for n in range(1, ports + 1))))
    state = recover(store)
    store.close()
    return state


def _quarantined(state_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(state_dir.glob(f"{DB_NAME}.quarantined-*"))


def _errors(caplog: pytest.LogCaptureFixture, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and event in r.getMessage()]


def test_garbage_file_is_quarantined_with_its_wal_and_the_store_starts_empty(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = b"this is not an SQLite database\n" * 500
    (tmp_path / DB_NAME).write_bytes(garbage)
    (tmp_path / f"{DB_NAME}-wal").write_bytes(b"stale log")
    store = Store(tmp_path)
    state = recover(store)
    assert state.resources == DesiredState().resources
    (kept,) = [p for p in _quarantined(tmp_path) if not p.name.endswith(("-wal", "-shm"))]
    assert kept.read_bytes() == garbage  # kept for inspection, untouched
    assert pathlib.Path(f"{kept}-wal").read_bytes() == b"stale log"  # beside it, where SQLite looks
    assert store.recovery.quarantined == str(kept)
    assert "SQLITE_NOTADB" in store.recovery.reason
    (line,) = _errors(caplog, "event=state_quarantined")
    assert f"path={kept}" in line and "reason=" in line
    # The fresh file works: journaled, recovered after a restart.
    store.journal(_wire(*BASE, _port(5)))
    store.close()
    assert set(recover(Store(tmp_path)).ports) == {"p5"}


def test_truncated_file_is_quarantined(tmp_path: pathlib.Path) -> None:
    _filled_store(tmp_path)
    path = tmp_path / DB_NAME
    data = path.read_bytes()
    assert len(data) > 8 * 4096
    path.write_bytes(data[: len(data) // 2])
    store = Store(tmp_path)
    assert recover(store).ports == {}
    assert store.recovery.quarantined and "SQLITE_CORRUPT" in store.recovery.reason
    assert pathlib.Path(store.recovery.quarantined).read_bytes() == data[: len(data) // 2]


def test_newer_schema_is_quarantined_not_rewritten(tmp_path: pathlib.Path) -> None:
    _filled_store(tmp_path, ports=3)
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.close()
    store = Store(tmp_path)
    assert recover(store).ports == {}
    assert (
        store.recovery.reason
        == f"schema_version {SCHEMA_VERSION + 1} is newer than this agent's {SCHEMA_VERSION}"
    )
    with sqlite3.connect(store.recovery.quarantined) as kept:  # as the newer agent left it
        assert kept.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION + 1),)]
        assert kept.execute(
            "SELECT count(*) FROM resource WHERE type = ?", (int(ResourceType.PORT),)
        ).fetchone() == (3,)
    kept.close()


def test_healthy_file_opens_as_it_is(tmp_path: pathlib.Path) -> None:
    state = _filled_store(tmp_path, ports=3)
    store = Store(tmp_path)
    assert recover(store).resources == state.resources
    assert store.recovery.quarantined == "" and _quarantined(tmp_path) == []


def test_bad_rows_are_skipped_and_the_rest_loads(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _filled_store(tmp_path, ports=3)
    port = to_json(state.ports["p1"])
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute("UPDATE resource SET body = '{not json' WHERE id = 'p2'")
        db.execute(
            "INSERT INTO resource VALUES (?, 'p9', 1, ?)", (int(ResourceType.PORT), port[: len(port) // 2])
        )
        db.execute("INSERT INTO resource VALUES (99, 'x1', 1, '{}')")  # a type this agent does not know
    db.close()
    store = Store(tmp_path)
    loaded = recover(store)
    assert set(loaded.ports) == {"p1", "p3"} and set(loaded.subnets) == {"s1"}
    assert store.recovery.rows_skipped == 3 and store.recovery.quarantined == ""
    lines = _errors(caplog, "event=state_row_skipped")
    assert any("type=PORT id=p2" in line for line in lines)
    assert any("type=PORT id=p9" in line for line in lines)
    assert any("type=99 id=x1" in line for line in lines)


def test_bad_journal_entry_is_skipped_and_later_ones_apply(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path)
    store.journal(_wire(*BASE, _port(1)))
    bad_seq = store.journal(Wire(2, b"\xff\xff\xff not a goal state", HOST))
    store.journal(_wire(_port(2)))
    store.close()
    store = Store(tmp_path)
    state = recover(store)
    assert set(state.ports) == {"p1", "p2"}
    assert store.recovery.journal_entries_skipped == 1
    assert any(f"seq={bad_seq} " in line for line in _errors(caplog, "event=journal_entry_skipped"))
    assert store.journaled() == []  # folded: a restart does not meet the bad entry again
    assert set(DesiredState(store.load()).ports) == {"p1", "p2"}


def _fill_up(store: Store) -> None:
    """A database that cannot grow: what a full disk looks like to SQLite (SQLITE_FULL)."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def _room(store: Store) -> None:
    store._db.execute("PRAGMA max_page_count = 1073741823")


def test_full_database_fails_the_append_then_the_next_one_succeeds(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path)
    first = store.journal(_wire(*BASE))
    big = _wire(*BASE, *(_port(n) for n in range(1, 100)))
    _fill_up(store)
    with pytest.raises(sqlite3.OperationalError) as failed:
        store.journal(big)
    assert failed.value.sqlite_errorname == "SQLITE_FULL"
    assert not store._db.in_transaction
    _room(store)
    second = store.journal(big)
    assert [seq for seq, _wire in store.journaled()] == [first, second]
    store.close()
    assert len(recover(Store(tmp_path)).ports) == 99  # durable and replayable


def test_full_database_fails_the_fold_then_the_next_one_succeeds(tmp_path: pathlib.Path) -> None:
    store = Store(tmp_path)
    seq = store.journal(_wire(*BASE, *(_port(n) for n in range(1, 100))))
    state = recover(Store(tmp_path))  # another connection replays it, folds nothing here
    _fill_up(store)
    keys = [(ResourceType.PORT, pid) for pid in state.ports]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.materialize(state, keys, journal_through=seq)
    _room(store)
    store.materialize(state, keys, journal_through=seq)
    assert store.journaled() == [] and len(store.load()[ResourceType.PORT]) == 99


def test_a_fold_that_fails_at_start_is_done_by_the_next_materialize(tmp_path: pathlib.Path) -> None:
    """A full disk at start: the journal keeps the entries and the recovered resources are folded
    with the core's first fold, which trims the journal past them."""
    store = Store(tmp_path)
    store.journal(_wire(*BASE, *(_port(n) for n in range(1, 100))))
    store.close()
    store = Store(tmp_path)
    _fill_up(store)
    state = recover(store)
    assert len(state.ports) == 99
    assert len(store.journaled()) == 1  # nothing lost
    _room(store)
    later = store.journal(_wire(_port(100)))
    state.apply(decode_wire(_wire(_port(100))))
    store.materialize(state, [(ResourceType.PORT, "p100")], journal_through=later)
    assert store.journaled() == []
    assert store.load()[ResourceType.PORT] == state.ports


def test_second_lock_on_a_state_dir_is_refused_until_the_first_is_released(tmp_path: pathlib.Path) -> None:
    held = lock_state_dir(tmp_path)
    with pytest.raises(
        StateDirInUse, match=f"state directory {tmp_path} is in use by another aca-agent"
    ) as refused:
        lock_state_dir(tmp_path)
    assert f"(pid {os.getpid()})" in str(refused.value)
    held.close()  # what the kernel does when the holder dies
    lock_state_dir(tmp_path).close()


def test_every_resource_type_round_trips_through_its_json_row() -> None:
    """Nested tuples of dataclasses, enums, empty and absent fields: each row decodes to the
    value it was written from (the decoder is built from the type hints, once per class)."""
    resources = [
        r.Vpc("v1", 3, "proj", "vpc", "10.0.0.0/16", 100, ("g1", "g2")),
        r.Subnet(
            "s1",
            2,
            "v1",
            "10.0.1.0/24",
            100,
            dhcp_enable=True,
            dns=("8.8.8.8",),
            extra_dhcp_options=(r.KeyValue("mtu", "1400"),),
        ),
        r.Port(
            "p1",
            1,
            "fa:16:3e:00:00:01",
            fixed_ips=(r.FixedIp("s1", "10.0.1.5"),),
            address_pairs=(r.AddressPair("10.0.1.0/28"),),
            admin_up=False,
        ),
        r.Neighbor(
            "n1",
            4,
            "fa:16:3e:00:00:02",
            "172.31.0.12",
            fixed_ips=(r.NeighborIp(r.NeighborType.L3, "s1", "10.0.1.6", 7),),
        ),
        r.SecurityGroup("sg1", 1, rules=(r.SecurityGroupRule("r1", 1, 0, 6, 22, 22),)),
        r.Dhcp("d1", 1, "s1", "fa:16:3e:00:00:03", ipv4="10.0.1.7"),
        r.Router(
            "rt1",
            5,
            "fa:16:3e:00:00:04",
            (r.SubnetRoutes("s1", (r.RoutingRule("rr1", "0.0.0.0/0", "10.0.1.1"),)),),
        ),
        r.Gateway("gw1", 1, destinations=(r.GatewayDestination("172.31.0.1", "fa:16:3e:00:00:05"),)),
    ]
    for resource in resources:
        rtype = next(t for t, cls in r.RESOURCE_CLASSES.items() if cls is type(resource))
        assert from_json(rtype, to_json(resource)) == resource
    neighbor = from_json(ResourceType.NEIGHBOR, to_json(resources[3]))
    assert type(neighbor.fixed_ips) is tuple and neighbor.fixed_ips[0].kind is r.NeighborType.L3


def test_a_row_field_this_agent_does_not_know_is_left_out_and_a_bad_enum_fails_the_row() -> None:
    row = json.loads(to_json(r.Port("p1", 1, "fa:16:3e:00:00:01")))
    assert from_json(ResourceType.PORT, json.dumps({**row, "added_later": 1})) == r.Port(
        "p1", 1, "fa:16:3e:00:00:01"
    )
    fixed = (r.NeighborIp(r.NeighborType.L2, "s1", "10.0.1.6"),)
    nb = json.loads(to_json(r.Neighbor("n1", 1, "fa:16:3e:00:00:02", "172.31.0.12", fixed_ips=fixed)))
    nb["fixed_ips"][0]["kind"] = 9
    with pytest.raises(ValueError):
        from_json(ResourceType.NEIGHBOR, json.dumps(nb))


def test_a_version_1_file_upgrades_keeping_its_state_and_then_holds_subscriptions(
    tmp_path: pathlib.Path,
) -> None:
    _filled_store(tmp_path, ports=3)
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # what an agent before subscriptions wrote
        db.execute("DROP TABLE subscription")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    store = Store(tmp_path)
    assert not store.recovery.quarantined
    assert sorted(recover(store).ports) == ["p1", "p2", "p3"]
    assert store.subscriptions() == {}
    store.set_subscription("vpc-b", "172.31.0.11")
    store.set_subscription("vpc-a", "")
    store.set_subscription("vpc-b", "host-b")  # a new key replaces the old one
    store.close()
    store = Store(tmp_path)
    assert store.subscriptions() == {"vpc-a": "", "vpc-b": "host-b"}
    store.drop_subscription("vpc-a")
    store.drop_subscription("never-subscribed")
    assert store.subscriptions() == {"vpc-b": "host-b"}
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]
    db.close()
    store.close()
