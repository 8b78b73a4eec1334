"""The agent as a client of the controller: ask for a resync after a restart (AGENT_RESTARTED)
and for on-demand routes, over TLS (mutual when a client certificate is set)."""

from __future__ import annotations

import logging
import pathlib
import threading
import uuid
from dataclasses import dataclass

import grpc

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc
from agent.tls import ConfigError, check_ca, check_key_pair, is_local

log = logging.getLogger("aca.controller")


@dataclass(frozen=True)
class ControllerSettings:
    """``[controller]``: where RequestGoalStates goes and how the channel is authenticated."""

    address: str = ""  # host:port (or unix:PATH) of the controller's GoalStateProvisioner; empty: none
    ca: str = ""  # CA that signed the controller's certificate (empty with cert set: system roots)
    cert: str = ""  # this agent's client certificate (mutual TLS)
    key: str = ""
    server_name: str = ""  # expected name in the controller's certificate, if not the address's host
    allow_insecure: bool = False  # plaintext to a controller on another host

    @property
    def tls(self) -> bool:
        return bool(self.ca or self.cert)

    @property
    def insecure(self) -> bool:
        return bool(self.address) and not self.tls and not is_local(self.address)

    def check(self) -> None:
        """Refuse a half-configured TLS and, unless allowed, plaintext to another host (ConfigError)."""
        if not self.address:
            return
        if bool(self.cert) != bool(self.key):
            given, other = ("cert", "key") if self.cert else ("key", "cert")
            raise ConfigError(f"[controller] {given} is set without {other}")
        if self.server_name and not self.tls:
            raise ConfigError("[controller] server_name is set without ca or cert: TLS is off")
        if self.cert:
            check_key_pair(self.cert, self.key, "[controller] client")
        if self.ca:
            check_ca(self.ca, "[controller] ca")
        if self.insecure and not self.allow_insecure:
            raise ConfigError(
                f"[controller] address {self.address} is on another host and the channel is plaintext: "
                "set ca, cert and key (mutual TLS), or allow_insecure = true"
            )

    def channel(self) -> grpc.Channel:
        """A channel to the controller, secure unless no CA or certificate is configured."""
        if not self.tls:
            return grpc.insecure_channel(self.address)
        creds = grpc.ssl_channel_credentials(
            root_certificates=pathlib.Path(self.ca).read_bytes() if self.ca else None,
            private_key=pathlib.Path(self.key).read_bytes() if self.key else None,
            certificate_chain=pathlib.Path(self.cert).read_bytes() if self.cert else None,
        )
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.secure_channel(self.address, creds, options=options)


def request_resync(
    controller: ControllerSettings, stop: threading.Event, attempts: int = 30
) -> pb.HostRequestReply | None:
    """Send RequestGoalStates(AGENT_RESTARTED); retry with backoff until answered or stopped.

    The controller answers by pushing goal states on the normal intake paths; until then the
    agent runs on the desired state it persisted, so this call never blocks start-up.
    """
    request = pb.HostRequest(format_version=1)
    request.state_requests.add(request_type=pb.AGENT_RESTARTED, request_id=str(uuid.uuid4()))
    delay = 0.5
    address = controller.address
    with controller.channel() as channel:
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

    def __init__(self, controller: ControllerSettings, timeout: float = 5.0) -> None:
        self.address = controller.address
        self.timeout = timeout
        self._channel = controller.channel()
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
