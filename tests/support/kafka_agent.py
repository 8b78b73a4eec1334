"""An agent consuming its Kafka topic inside a sandbox host: its configuration and the group's
committed offset, as tests read them."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

from confluent_kafka import Consumer, TopicPartition

from agent.intake.kafka_consumer import KafkaSettings
from agent.sandbox.hosts import HostInfo
from agent.sandbox.kafka import FAST_GROUP_OPTIONS, KafkaBroker
from agent.tls import is_local


def agent_config(
    host: HostInfo, broker: KafkaBroker, reply_topic: str, options: Mapping[str, str] | None = None
) -> pathlib.Path:
    """The agent's TOML: the broker, replies on, fast group timings plus ``options`` (librdkafka
    keys). The test broker speaks plaintext only: one on another host than the host namespace's
    loopback (the sandbox's underlay) needs ``allow_insecure``, as the agent refuses it otherwise."""
    merged = {**FAST_GROUP_OPTIONS, **(options or {})}
    lines = "\n".join(f'"{key}" = "{value}"' for key, value in merged.items())
    insecure = "" if is_local(broker.bootstrap) else "allow_insecure = true\n"
    path = pathlib.Path(host.dir) / "agent.toml"
    path.write_text(
        f'[kafka]\nbootstrap_servers = "{broker.bootstrap}"\nreply_topic = "{reply_topic}"\n{insecure}\n'
        f"[kafka.options]\n{lines}\n"
    )
    return path


def committed_offset(broker: KafkaBroker, topic: str, group: str) -> int:
    """``group``'s committed offset on partition 0 of ``topic``, read by a client that does not
    join the group."""

    def read() -> int:
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group})
        try:
            return consumer.committed([TopicPartition(topic, 0)], timeout=5)[0].offset
        finally:
            consumer.close()

    return broker.call(read)


def group_committed(settings: KafkaSettings) -> int:
    """The group's committed offset for an in-process intake (broker on this namespace's
    loopback), read by a separate client that does not join the group."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": settings.group_id})
    try:
        return consumer.committed([TopicPartition(settings.topic, 0)], timeout=5)[0].offset
    finally:
        consumer.close()
