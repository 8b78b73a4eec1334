"""One agent per state directory: an exclusive ``flock`` on ``<state dir>/aca-agent.lock``.

Two agents on one directory would journal into the same store, unlink each other's control
socket and program the same bridge from two desired states. The lock is held for the process's
life; the kernel drops it when the process ends however it ends, so a killed agent never blocks
the next start (no stale pid files to clean).
"""

from __future__ import annotations

import fcntl
import os
import pathlib
from typing import IO

LOCK_NAME = "aca-agent.lock"


class StateDirInUse(Exception):
    """Another process holds the state directory's lock; the message names the directory."""


def lock_state_dir(state_dir: str | os.PathLike[str]) -> IO[str]:
    """Take the lock, or raise ``StateDirInUse``; keep the returned file open to keep the lock.

    The holder writes its pid into the file, so the refusal can say who holds it."""
    directory = pathlib.Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    lock = open(directory / LOCK_NAME, "a+")  # noqa: SIM115 (held open for the process's life)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise StateDirInUse(
            f"state directory {directory} is in use by another aca-agent (pid {holder}); refusing to start"
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock
