"""Helpers for end-to-end tests of aca-agent as a process inside a sandbox host."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from agent._pb import goalstate_pb2 as pb
from agent.cli import acactl
from agent.sandbox.hosts import Sandbox


@contextlib.contextmanager
def scratch_sandbox() -> Iterator[Sandbox]:
    """A sandbox with its own short tmp directory (unix socket paths) and a unique prefix,
    so it never collides with a user's; torn down however the block ends."""
    root = tempfile.mkdtemp(prefix="acae-")
    sandbox = Sandbox(root, prefix=f"acae{uuid.uuid4().hex[:4]}-")
    try:
        yield sandbox
    finally:
        sandbox.down()
        shutil.rmtree(root, ignore_errors=True)


def control(sandbox: Sandbox, host: str, what: str) -> Any:
    """What the agent reports on its control socket (status, ports, neighbours, flows)."""
    return acactl.request(sandbox.host(host).control_socket, what, timeout=10)


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def statuses(reply: pb.GoalStateOperationReply) -> list[tuple[str, str, str, str]]:
    """(resource id, type, operation, status) per status, in reply order, timings left out."""
    return [
        (
            s.resource_id,
            pb.ResourceType.Name(s.resource_type),
            pb.OperationType.Name(s.operation_type),
            pb.OperationStatus.Name(s.operation_status),
        )
        for s in reply.operation_statuses
    ]


def status_by_id(reply: pb.GoalStateOperationReply) -> dict[str, str]:
    """Resource id → status name."""
    return {rid: status for rid, _type, _op, status in statuses(reply)}
