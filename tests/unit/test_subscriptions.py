"""Shared topics: which topic names a subscription takes, and which records of a shared topic
a host acts on (the definition of ``key``)."""

from __future__ import annotations

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.intake.subscriptions import Route, route, topic_problem
from agent.sandbox import goalstates as gs

ME, OTHER = "172.31.0.11", "172.31.0.12"


@pytest.mark.parametrize("topic", ["vpc-1", "VPC.a_b-c", "x" * 249])
def test_kafka_topic_names_are_taken(topic: str) -> None:
    assert topic_problem(topic) == ""


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "topic is empty"),
        (".", "not a Kafka topic name"),
        ("..", "not a Kafka topic name"),
        ("vpc 1", "not a Kafka topic name"),
        ("vpc/1", "not a Kafka topic name"),
        ("x" * 250, "not a Kafka topic name"),
        ("vpc-é", "not a Kafka topic name"),
    ],
)
def test_malformed_topic_names_say_why(topic: str, reason: str) -> None:
    assert reason in topic_problem(topic)


def _naming(*hosts: str) -> pb.GoalStateV2:
    msg = gs.goal_state_v2(gs.vpc("v1", 100))
    for host in hosts:
        msg.host_resources[host].resources.add(type=pb.VPC, id="v1")
    return msg


def test_unkeyed_records_apply_only_where_host_resources_names_the_host() -> None:
    assert route(None, ME, _naming(ME, OTHER), ME) is Route.APPLY
    assert route(b"", ME, _naming(ME), ME) is Route.APPLY  # an empty key is no key
    assert route(None, ME, _naming(OTHER), ME) is Route.NOT_FOR_HOST
    assert route(None, ME, _naming(), ME) is Route.NOT_FOR_HOST
    assert route(None, ME, gs.goal_state_v1(gs.vpc("v1", 100)), ME) is Route.NOT_FOR_HOST


def test_a_record_keyed_for_this_host_is_addressed_to_it_and_another_hosts_key_is_skipped() -> None:
    assert route(ME.encode(), ME, _naming(), ME) is Route.APPLY
    assert route(b"host-a", "host-a", gs.goal_state_v1(gs.vpc("v1", 100)), ME) is Route.APPLY
    assert route(OTHER.encode(), ME, _naming(ME, OTHER), ME) is Route.OTHER_KEY
