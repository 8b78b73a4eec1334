"""Core results → GoalStateOperationReply, the one reply shape both transports send."""

from __future__ import annotations

from agent._pb import goalstate_pb2 as pb
from agent.core import MessageResult

FORMAT_VERSION = 1
_U32 = 0xFFFFFFFF


def to_reply(result: MessageResult) -> pb.GoalStateOperationReply:
    reply = pb.GoalStateOperationReply(
        format_version=FORMAT_VERSION, message_total_operation_time=min(result.total_us, _U32)
    )
    for s in result.statuses:
        reply.operation_statuses.add(
            resource_id=s.resource_id,
            resource_type=int(s.resource_type),
            operation_type=int(s.operation),
            operation_status=int(s.status),
            dataplane_programming_time=min(s.dataplane_us, _U32),
            network_configuration_time=min(s.config_us, _U32),
            state_elapse_time=min(s.elapsed_us, _U32),
        )
    return reply
