"""A controller simulator: a real gRPC GoalStateProvisioner server on a unix socket that records the
RequestGoalStates calls agents send it and answers them through a pluggable handler. It requires
mutual TLS like a real controller: the sandbox's agents present the sandbox CA's AGENT
certificate (agent/sandbox/pki.py)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc
from agent.sandbox.pki import Pki

# One state request → the OperationStatus to answer it with (it may push goal states first).
Handler = Callable[[pb.HostRequest.ResourceStateRequest], int]


class TestController(pb_grpc.GoalStateProvisionerServicer):
    """Records every RequestGoalStates; answers each state request with ``handler`` (SUCCESS
    when none is set)."""

    __test__ = False  # not a pytest test class

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.requests: list[pb.HostRequest] = []
        self.seen = threading.Event()
        self._lock = threading.Lock()

    def RequestGoalStates(
        self, request: pb.HostRequest, context: grpc.ServicerContext
    ) -> pb.HostRequestReply:
        with self._lock:
            self.requests.append(request)
        self.seen.set()
        reply = pb.HostRequestReply(format_version=1)
        for r in request.state_requests:
            status = self.handler(r) if self.handler is not None else pb.SUCCESS
            reply.operation_statuses.add(request_id=r.request_id, operation_status=status)
        return reply

    def state_requests(self, request_type: int | None = None) -> list[pb.HostRequest.ResourceStateRequest]:
        with self._lock:
            return [
                r
                for req in self.requests
                for r in req.state_requests
                if request_type is None or r.request_type == request_type
            ]


@contextlib.contextmanager
def serve(controller: TestController, socket_path: str, pki: Pki) -> Iterator[str]:
    """Serve ``controller`` on ``unix:<socket_path>`` with ``pki``'s CONTROLLER certificate,
    requiring a client certificate from its CA, while the block runs; yields that address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GoalStateProvisionerServicer_to_server(controller, server)
    address = f"unix:{socket_path}"
    server.add_secure_port(address, pki.server_credentials())
    server.start()
    try:
        yield address
    finally:
        server.stop(0)
