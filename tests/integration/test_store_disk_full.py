"""The state store on a really full file system (a 256 KiB tmpfs): the append that does not fit
fails with SQLITE_FULL and leaves no transaction open; once the file system grows, the next
append succeeds and everything journaled before the failure is still there and replays."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import subprocess
from collections.abc import Iterator

import pytest

from agent.model.decode import Wire
from agent.model.store import Store, recover
from agent.sandbox import goalstates as gs
from tests.support.parts import missing

pytestmark = pytest.mark.integration

if os.geteuid() != 0:
    missing("mounting a tmpfs needs root")

HOST = "172.31.0.11"


@pytest.fixture
def small_fs(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    mountpoint = tmp_path / "state"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=False)


def _message(first_port: int) -> Wire:
    ports = [
        gs.port(
            f"p{n}", "v1", "s1", f"10.0.{n // 250}.{n % 250 + 2}", f"fa:16:3e:00:{n >> 8:02x}:{n & 0xFF:02x}"
        )
        for n in range(first_port, first_port + 40)
    ]
    message = gs.goal_state_v2(
        gs.vpc("v1", 100), gs.subnet("s1", "v1", "10.0.0.0/16", 100), *ports, host_ip=HOST
    )
    return Wire(2, message.SerializeToString(), HOST)


def test_a_full_disk_fails_one_append_and_the_next_succeeds_once_there_is_room(
    small_fs: pathlib.Path,
) -> None:
    store = Store(small_fs)
    journaled: list[int] = []
    with pytest.raises(sqlite3.OperationalError) as full:
        for i in range(1000):
            journaled.append(store.journal(_message(40 * i)))
    assert full.value.sqlite_errorname == "SQLITE_FULL"
    assert journaled  # some fitted before the disk filled up
    failed_at = len(journaled)

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_fs)], check=True)
    later = store.journal(_message(40 * failed_at))

    assert [seq for seq, _wire in store.journaled()] == [*journaled, later]
    store.close()
    assert len(recover(Store(small_fs)).ports) == 40 * (failed_at + 1)
