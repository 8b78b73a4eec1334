"""gRPC intake: the GoalStateProvisioner methods the controller calls on the agent.

Requests are taken as raw bytes and decoded here, so bytes that are not a goal state get
INVALID_ARGUMENT (grpcio's own deserializer failure would be INTERNAL) and the server goes on.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from agent._pb import goalstate_pb2 as pb
from agent.core import AgentCore
from agent.intake.replies import to_reply
from agent.intake.subscribe_service import SubscribeService
from agent.model.decode import Wire, decode_v1, decode_v2

log = logging.getLogger("aca.grpc")
SERVICE = "alcor.schema.GoalStateProvisioner"


@dataclass(frozen=True)
class GrpcSettings:
    listen: str = "0.0.0.0:50001"
    subscribe_listen: str = "0.0.0.0:50002"  # SubscribeInfoProvisioner, same credentials; "": off
    max_message_bytes: int = 256 * 1024 * 1024
    workers: int = 16
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""  # set → mutual TLS: clients must present a certificate signed by it


class GoalStateService:
    def __init__(self, core: AgentCore, host_ip: str) -> None:
        self.core = core
        self.host_ip = host_ip

    def _parse(self, raw: bytes, message_type: type, context: grpc.ServicerContext) -> Any:
        try:
            return message_type.FromString(raw)
        except DecodeError as exc:
            self.core.counters["grpc_undecodable"] += 1
            log.warning(
                "event=grpc_undecodable type=%s bytes=%d error=%r", message_type.__name__, len(raw), str(exc)
            )
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a {message_type.__name__}: {exc}")

    def push_v1(self, raw: bytes, context: grpc.ServicerContext) -> pb.GoalStateOperationReply:
        message = self._parse(raw, pb.GoalState, context)
        return to_reply(self.core.apply(decode_v1(message), "grpc-v1", Wire(1, raw)))

    def push_v2_stream(
        self, raws: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[pb.GoalStateOperationReply]:
        for raw in raws:
            message = self._parse(raw, pb.GoalStateV2, context)
            requests = decode_v2(message, self.host_ip)
            yield to_reply(self.core.apply(requests, "grpc-v2", Wire(2, raw, self.host_ip)))

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


def start_server(service: GoalStateService | SubscribeService, settings: GrpcSettings) -> grpc.Server:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.workers), options=options)
    server.add_generic_rpc_handlers((service.handler(),))
    creds = _credentials(settings)
    if creds is None:
        port = server.add_insecure_port(settings.listen)
    else:
        port = server.add_secure_port(settings.listen, creds)
    if port == 0 and not settings.listen.startswith("unix:"):
        raise OSError(f"cannot listen on {settings.listen}")
    server.start()
    log.info("event=grpc_listening address=%s tls=%s", settings.listen, bool(creds))
    return server
