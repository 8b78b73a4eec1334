"""gRPC intake: the GoalStateProvisioner methods the controller calls on the agent.

Requests are taken as raw bytes and decoded here, so bytes that are not a goal state get
INVALID_ARGUMENT (grpcio's own deserializer failure would be INTERNAL) and the server goes on.

Memory is bounded before anything is parsed (docs/reliability.md): grpc refuses a message over
``max_message_bytes`` and RPCs beyond ``maximum_concurrent_rpcs`` (RESOURCE_EXHAUSTED), and a
goal state the core has no room for is refused with RESOURCE_EXHAUSTED too; the controller retries.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from agent._pb import goalstate_pb2 as pb
from agent.core import AgentCore, CoreBusy
from agent.intake.replies import to_reply
from agent.intake.subscribe_service import SubscribeService
from agent.model.decode import Wire, decode_v1, decode_v2
from agent.tls import ConfigError, check_ca, check_key_pair, is_local

log = logging.getLogger("aca.grpc")
SERVICE = "alcor.schema.GoalStateProvisioner"
# The largest real goal state, 100,000 L2 neighbours with UUID ids and the host's resource list,
# is 28.8 MiB as a GoalStateV2 and 20.3 MiB as a GoalState (v1); its reply is 5.8 MiB. This
# limit (both directions) leaves 2x headroom; grpc refuses a message over it by its length prefix.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class GrpcSettings:
    listen: str = "0.0.0.0:50001"  # empty: no gRPC intake
    subscribe_listen: str = "0.0.0.0:50002"  # SubscribeInfoProvisioner, same credentials; "": off
    max_message_bytes: int = MAX_MESSAGE_BYTES
    workers: int = 16
    # RPCs served at once (an open v2 stream counts for its whole life); grpc answers more with
    # RESOURCE_EXHAUSTED. Each may hold one received message (up to max_message_bytes) while the
    # core decides whether it has room for it. Keep it at or below ``workers``.
    maximum_concurrent_rpcs: int = 8
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # set → mutual TLS: clients must present a certificate signed by it
    # Plaintext or server-only TLS on an address other hosts can reach: refused unless set.
    allow_insecure: bool = False
    # Client certificate identities (subject CN or a SAN) allowed to push; empty: any the CA signed.
    allowed_clients: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_clients", tuple(self.allowed_clients))

    @property
    def mutual_tls(self) -> bool:
        return bool(self.tls_cert and self.tls_client_ca)

    @property
    def insecure(self) -> bool:
        """Listening where other hosts can push without a client certificate."""
        return bool(self.listen) and not self.mutual_tls and not is_local(self.listen)

    def check(self) -> None:
        """Refuse a half-configured TLS, and an unauthenticated listener other hosts can reach
        unless ``allow_insecure`` says so (ConfigError)."""
        if not self.listen:
            return
        if (self.tls_key or self.tls_client_ca) and not self.tls_cert:
            given = "tls_key" if self.tls_key else "tls_client_ca"
            raise ConfigError(
                f"[grpc] {given} is set without tls_cert: set tls_cert, tls_key and tls_client_ca"
            )
        if self.tls_cert and not self.tls_key:
            raise ConfigError("[grpc] tls_cert is set without tls_key")
        if self.tls_cert:
            check_key_pair(self.tls_cert, self.tls_key, "[grpc] tls")
        if self.tls_client_ca:
            check_ca(self.tls_client_ca, "[grpc] tls_client_ca")
        if self.allowed_clients and not self.mutual_tls:
            raise ConfigError("[grpc] allowed_clients needs mutual TLS (tls_cert, tls_key, tls_client_ca)")
        if self.insecure and not self.allow_insecure:
            missing = "tls_client_ca" if self.tls_cert else "tls_cert, tls_key and tls_client_ca"
            raise ConfigError(
                f"[grpc] listen {self.listen} is reachable from other hosts without client certificates: "
                f"set {missing} (mutual TLS), listen on loopback or a unix socket, or allow_insecure = true"
            )


def client_identities(context: grpc.ServicerContext) -> set[str]:
    """The verified client certificate's subject CN and SANs (empty without mutual TLS)."""
    auth = context.auth_context()
    names = auth.get("x509_common_name", []) + auth.get("x509_subject_alternative_name", [])
    return {name.decode(errors="replace") for name in names}


class GoalStateService:
    def __init__(self, core: AgentCore, host_ip: str, allowed_clients: tuple[str, ...] = ()) -> None:
        self.core = core
        self.host_ip = host_ip
        self.allowed_clients = frozenset(allowed_clients)

    def _authorize(self, context: grpc.ServicerContext) -> None:
        """With ``allowed_clients`` pinned, a certificate the CA signed for someone else is refused."""
        if not self.allowed_clients:
            return
        names = client_identities(context)
        if not names & self.allowed_clients:
            self.core.counters["grpc_client_refused"] += 1
            log.warning(
                "event=grpc_client_refused peer=%s identities=%s", context.peer(), ",".join(sorted(names))
            )
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "client certificate not in allowed_clients")

    def _parse(self, raw: bytes, message_type: type, context: grpc.ServicerContext) -> Any:
        try:
            return message_type.FromString(raw)
        except DecodeError as exc:
            self.core.counters["grpc_undecodable"] += 1
            log.warning(
                "event=grpc_undecodable type=%s bytes=%d error=%s", message_type.__name__, len(raw), str(exc)
            )
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a {message_type.__name__}: {exc}")

    def _admit(self, raw: bytes, source: str, context: grpc.ServicerContext) -> contextlib.ExitStack:
        """Room in the core for this goal state, held until it is answered; else RESOURCE_EXHAUSTED."""
        try:
            return self.core.admit(len(raw), source)
        except CoreBusy as exc:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc}; retry")

    def push_v1(self, raw: bytes, context: grpc.ServicerContext) -> pb.GoalStateOperationReply:
        self._authorize(context)
        with self._admit(raw, "grpc-v1", context):
            message = self._parse(raw, pb.GoalState, context)
            return to_reply(self.core.apply(decode_v1(message), "grpc-v1", Wire(1, raw)))

    def push_v2_stream(
        self, raws: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[pb.GoalStateOperationReply]:
        self._authorize(context)
        for raw in raws:
            with self._admit(raw, "grpc-v2", context):
                message = self._parse(raw, pb.GoalStateV2, context)
                requests = decode_v2(message, self.host_ip)
                reply = to_reply(self.core.apply(requests, "grpc-v2", Wire(2, raw, self.host_ip)))
            yield reply

    def handler(self) -> grpc.GenericRpcHandler:
        serialize = pb.GoalStateOperationReply.SerializeToString
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "PushNetworkResourceStates": grpc.unary_unary_rpc_method_handler(
                    self.push_v1, request_deserializer=None, response_serializer=serialize
                ),
                "PushGoalStatesStream": grpc.stream_stream_rpc_method_handler(
                    self.push_v2_stream, request_deserializer=None, response_serializer=serialize
                ),
            },
        )


def _credentials(settings: GrpcSettings) -> grpc.ServerCredentials | None:
    if not settings.tls_cert:
        return None
    cert = pathlib.Path(settings.tls_cert).read_bytes()
    key = pathlib.Path(settings.tls_key).read_bytes()
    if settings.tls_client_ca:
        ca = pathlib.Path(settings.tls_client_ca).read_bytes()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    return grpc.ssl_server_credentials([(key, cert)])


def start_server(
    service: GoalStateService | SubscribeService, settings: GrpcSettings, health: HealthServicer | None = None
) -> grpc.Server:
    """``health``, if given, answers grpc.health.v1 on the same server (its status is set by
    whoever knows the agent's health: the daemon)."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.workers),
        options=options,
        maximum_concurrent_rpcs=settings.maximum_concurrent_rpcs,
    )
    server.add_generic_rpc_handlers((service.handler(),))
    if health is not None:
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
    creds = _credentials(settings)
    if creds is None:
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, creds)
    if port == 0 and not settings.listen.startswith("unix:"):
        raise OSError(f"cannot listen on {settings.listen}")
    server.start()
    tls = "mutual" if settings.mutual_tls else "server-only" if creds else "off"
    log.info("event=grpc_listening address=%s tls=%s", settings.listen, tls)
    return server
