"""gRPC intake of ``SubscribeInfoProvisioner/PushNodeSubscribeInfo``: the controller tells this
host which shared Kafka topics to consume (served on its own port, 50002 by default, with the
goal-state endpoint's credentials).

Answers: SUCCESS (subscribed and persisted, or unsubscribed), INVALID_ARG (bytes that are not a
NodeSubscribeInfo, an unknown operation, an empty or malformed topic name, this host's own
topics), FAILURE (the broker does not know or refuses the topic, the Kafka intake is off or did
not take the request in time). The reason is logged with the topic.
"""

from __future__ import annotations

import logging
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from agent._pb import goalstate_pb2 as pb
from agent.intake.subscriptions import topic_problem
from agent.model.resources import Status

log = logging.getLogger("aca.subscribe")
SERVICE = "alcor.schema.SubscribeInfoProvisioner"


class Subscriber(Protocol):
    """What takes the subscriptions: the Kafka intake."""

    def subscribe(self, topic: str, key: str) -> tuple[Status, str]: ...

    def unsubscribe(self, topic: str) -> tuple[Status, str]: ...


class SubscribeService:
    def __init__(self, subscriber: Subscriber | None) -> None:
        self.subscriber = subscriber  # None: no Kafka intake, every request answers FAILURE

    def push(self, raw: bytes, _context: grpc.ServicerContext) -> pb.SubscribeOperationReply:
        topic, status, reason = "", Status.INVALID_ARG, ""
        try:
            request = pb.NodeSubscribeInfo.FromString(raw)
        except DecodeError as exc:
            reason = f"not a NodeSubscribeInfo: {exc}"
        else:
            topic = request.topic
            status, reason = self._change(request)
        if status is Status.SUCCESS:
            log.info("event=subscribe_info topic=%s status=%s", topic, status.name)
        else:
            log.warning("event=subscribe_info topic=%s status=%s reason=%r", topic, status.name, reason)
        return pb.SubscribeOperationReply(operation_status=int(status))

    def _change(self, request: pb.NodeSubscribeInfo) -> tuple[Status, str]:
        operation = request.subscribe_operation
        if operation not in (pb.Subscribe, pb.Unsubscribe):
            return Status.INVALID_ARG, f"unknown subscribe_operation {operation}"
        problem = topic_problem(request.topic)
        if problem:
            return Status.INVALID_ARG, problem
        if self.subscriber is None:
            return Status.FAILURE, "the Kafka intake is off (no [kafka] bootstrap_servers)"
        if operation == pb.Subscribe:
            return self.subscriber.subscribe(request.topic, request.key)
        return self.subscriber.unsubscribe(request.topic)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "PushNodeSubscribeInfo": grpc.unary_unary_rpc_method_handler(
                    self.push,
                    request_deserializer=None,
                    response_serializer=pb.SubscribeOperationReply.SerializeToString,
                )
            },
        )
