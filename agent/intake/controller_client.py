"""The agent as a client of the controller: ask for a resync after a restart (AGENT_RESTARTED)."""

from __future__ import annotations

import logging
import threading
import uuid

import grpc

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc

log = logging.getLogger("aca.controller")


def request_resync(address: str, stop: threading.Event, attempts: int = 30) -> pb.HostRequestReply | None:
    """Send RequestGoalStates(AGENT_RESTARTED); retry with backoff until answered or stopped.

    The controller answers by pushing goal states on the normal intake paths; until then the
    agent runs on the desired state it persisted, so this call never blocks start-up.
    """
    request = pb.HostRequest(format_version=1)
    request.state_requests.add(request_type=pb.AGENT_RESTARTED, request_id=str(uuid.uuid4()))
    delay = 0.5
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GoalStateProvisionerStub(channel)
        for attempt in range(1, attempts + 1):
            try:
                reply = stub.RequestGoalStates(request, timeout=10)
                log.info("event=resync_requested controller=%s attempt=%d", address, attempt)
                return reply
            except grpc.RpcError as exc:
                log.warning(
                    "event=resync_request_failed controller=%s attempt=%d code=%s",
                    address,
                    attempt,
                    exc.code(),
                )
            if stop.wait(delay):
                return None
            delay = min(delay * 2, 30.0)
    return None
