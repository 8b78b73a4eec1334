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


_PROTOCOLS = {1: pb.ICMP, 6: pb.TCP, 17: pb.UDP}


class OnDemandClient:
    """RequestGoalStates(ON_DEMAND) for a routed packet with no known destination.

    The controller answers by pushing the destination's goal state to this agent on the normal
    intake paths, then replies SUCCESS (routable) or FAILURE. One channel for the agent's life.
    """

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.GoalStateProvisionerStub(self._channel)

    def request(
        self, tunnel_id: int, src_ip: str, src_port: int, dst_ip: str, dst_port: int, ip_proto: int
    ) -> bool:
        """True when the controller says the destination is routable (it pushed its state)."""
        request = pb.HostRequest(format_version=1)
        rid = str(uuid.uuid4())
        request.state_requests.add(
            request_type=pb.ON_DEMAND,
            request_id=rid,
            tunnel_id=tunnel_id,
            source_ip=src_ip,
            source_port=src_port,
            destination_ip=dst_ip,
            destination_port=dst_port,
            ethertype=pb.IPV4,
            protocol=_PROTOCOLS.get(ip_proto, pb.TCP),
        )
        try:
            reply = self._stub.RequestGoalStates(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            log.warning(
                "event=on_demand_request_failed controller=%s dst=%s code=%s",
                self.address,
                dst_ip,
                exc.code(),
            )
            return False
        ok = any(s.request_id == rid and s.operation_status == pb.SUCCESS for s in reply.operation_statuses)
        log.info("event=on_demand_reply dst=%s vni=%d routable=%s", dst_ip, tunnel_id, ok)
        return ok

    def close(self) -> None:
        self._channel.close()
