"""Helpers for end-to-end tests of aca-agent as a process inside a sandbox host."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator

from agent._pb import goalstate_pb2 as pb
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
