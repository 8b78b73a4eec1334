"""Shared topics: which Kafka topic names a controller may subscribe a host to, and which records
on a shared topic this host acts on.

A shared topic (a VPC's, say) is read by every host subscribed to it, each in its own consumer
group (the agent's group), so every host gets every record. A record is for this host when:

* it carries a key and the key is this host's key on that topic (the ``key`` of
  ``NodeSubscribeInfo``; empty there means this host's underlay IP, the name ``host_resources``
  uses). It is then a per-host record that travels on a shared topic, applied as one on the
  host's own topic is. A record keyed for another host is skipped: counted and committed;
* it carries no key (or an empty one) and is a GoalStateV2 whose ``host_resources`` names this
  host: exactly the resources listed there are acted on, the rest of the message is context.
  One that does not name this host (a GoalState v1 has no ``host_resources``) changes nothing
  here and gets no reply: it is counted and committed.
"""

from __future__ import annotations

import enum
import re

from agent._pb import goalstate_pb2 as pb

# Kafka's own rule for topic names (kafka.common.internals.Topic): 1-249 of these characters.
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def topic_problem(topic: str) -> str:
    """Why ``topic`` cannot be a Kafka topic name, or "" when it can."""
    if not topic:
        return "topic is empty"
    if topic in (".", "..") or not _TOPIC.fullmatch(topic):
        return f"topic {topic!r} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -, not . or ..)"
    return ""


class Route(enum.Enum):
    """What the intake does with one record of a shared topic."""

    APPLY = "apply"
    OTHER_KEY = "other_key"  # keyed for another host: skipped, committed
    NOT_FOR_HOST = "not_for_host"  # host_resources does not name this host: skipped, committed


def route(record_key: bytes | None, host_key: str, goal_state: object, host_ip: str) -> Route:
    if record_key:
        return Route.APPLY if record_key == host_key.encode() else Route.OTHER_KEY
    if isinstance(goal_state, pb.GoalStateV2) and host_ip in goal_state.host_resources:
        return Route.APPLY
    return Route.NOT_FOR_HOST
