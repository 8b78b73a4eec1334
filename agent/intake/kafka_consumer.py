"""Kafka intake: the legacy Alcor path, one topic per host carrying serialized goal states.

Delivery is at-least-once: a message's offset is committed only after the core has applied
(and persisted) its goal state and, when configured, its reply has been delivered. A crash in
between redelivers the message; the core makes re-applying it a no-op. Undecodable messages are
committed past, so one bad record can never wedge the host.
"""

from __future__ import annotations

import collections
import enum
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from google.protobuf.message import DecodeError

from agent._pb import goalstate_pb2
from agent.supervision import Heartbeat, Supervisor

log = logging.getLogger("aca.kafka")

DecodedGoalState = goalstate_pb2.GoalState | goalstate_pb2.GoalStateV2
ApplyFn = Callable[[DecodedGoalState], goalstate_pb2.GoalStateOperationReply]
MetricsFn = Callable[[str], None]

FORMAT_HEADER = "alcor-format"
SOURCE_TOPIC_HEADER = "alcor-source-topic"
SOURCE_PARTITION_HEADER = "alcor-source-partition"
SOURCE_OFFSET_HEADER = "alcor-source-offset"

_LOG_INTERVAL_S = 30.0
_BACKOFF_MIN_S = 0.2
_BACKOFF_MAX_S = 5.0
_REPLY_FLUSH_TIMEOUT_S = 10.0
THREAD_NAME = "aca-kafka-intake"
# Longest a round of the loop may take and still count as healthy: an apply waits for the core
# (a big goal state takes seconds; a hung core is the core's own stall), a reply flush takes at
# most _REPLY_FLUSH_TIMEOUT_S, a synchronous commit at most librdkafka's request timeout (60 s).
_STALL_S = 120.0
# How often librdkafka reports its statistics (consumer lag per partition); a passthrough
# option of the same name overrides it.
_STATS_INTERVAL_MS = 5000


@dataclass(frozen=True)
class KafkaSettings:
    """Where the host's goal states come from; `extra` carries standard librdkafka keys
    (security.protocol, sasl.*, ssl.*, timeouts) to both the consumer and the reply producer."""

    bootstrap_servers: str
    topic: str
    group_id: str
    reply_topic: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    poll_timeout_s: float = 0.5

    def consumer_config(self) -> dict[str, object]:
        """Extras first, so nothing passed through can turn auto-commit back on."""
        return {
            "statistics.interval.ms": _STATS_INTERVAL_MS,
            **self.extra,
            "bootstrap.servers": self.bootstrap_servers,
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "logger": logging.getLogger("aca.kafka.librdkafka"),
        }

    def producer_config(self) -> dict[str, object]:
        return {
            **self.extra,
            "bootstrap.servers": self.bootstrap_servers,
            "logger": logging.getLogger("aca.kafka.librdkafka"),
        }


class IntakeState(enum.Enum):
    """Group membership as seen from the rebalance callbacks."""

    STOPPED = "stopped"
    JOINING = "joining"
    CONSUMING = "consuming"


def decode_goal_state(value: bytes | None, fmt: str) -> DecodedGoalState:
    """`alcor-format: v1` selects GoalState; anything else (Alcor's default) is GoalStateV2.

    A zero-length value is a valid empty goal state (the controller's warm-up); a null value
    (tombstone) carries nothing and is rejected like corrupt bytes.
    """
    if value is None:
        raise DecodeError("null value")
    cls = goalstate_pb2.GoalState if fmt == "v1" else goalstate_pb2.GoalStateV2
    return cls.FromString(value)


def consumer_lag(topics: dict[str, Any]) -> dict[tuple[str, int], int]:
    """(topic, partition) → consumer lag from the ``topics`` of librdkafka's statistics; its
    internal partition (-1) and partitions without a known lag (-1) are left out."""
    return {
        (topic, int(pid)): part["consumer_lag"]
        for topic, t in topics.items()
        for pid, part in t.get("partitions", {}).items()
        if int(pid) >= 0 and part.get("consumer_lag", -1) >= 0
    }


def _header(msg: Message, name: str) -> str:
    for key, value in msg.headers() or ():
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return ""


def _names(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{p.topic}/{p.partition}" for p in partitions)


class _RateLimit:
    """Lets one line per key through every `interval` seconds and counts what it held back,
    so a broker outage or a failing core cannot flood the journal."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def allow(self, key: str) -> int | None:
        """Number of lines suppressed since the last one if this one may be logged, else None."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] += 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


class KafkaIntake:
    """Consumes the host topic on its own thread and hands each goal state to `apply`.

    `apply` blocks until the goal state is applied and persisted; if it raises, the message is
    not committed and is retried after a backoff. `metrics`, if given, is called with a counter
    name each time one of `counters` moves.
    """

    def __init__(self, config: KafkaSettings, apply: ApplyFn, metrics: MetricsFn | None = None) -> None:
        self._settings = config
        self._apply = apply
        self._metrics = metrics
        self.counters: collections.Counter[str] = collections.Counter()
        self._state = IntakeState.STOPPED
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._limit = _RateLimit(_LOG_INTERVAL_S)
        self._backoff = _BACKOFF_MIN_S
        self._lag: dict[tuple[str, int], int] = {}  # from librdkafka's last statistics

    @property
    def state(self) -> IntakeState:
        return self._state

    def lag(self) -> dict[tuple[str, int], int]:
        """(topic, partition) → records between the committed offset and the partition's end,
        as of librdkafka's last statistics (partitions it does not know a lag for left out)."""
        return dict(self._lag)

    # ------------------------------------------------------------ lifecycle
    def start(self, supervisor: Supervisor | None = None) -> None:
        """Create the clients here so a bad configuration fails the caller, then consume.

        Under ``supervisor`` a loop that raises is restarted (new clients, after a backoff):
        safe, because a message is committed only once applied and answered, so the one in hand
        comes again to the new consumer and re-applying it is a no-op for the core.
        """
        if self._thread is not None:
            raise RuntimeError("KafkaIntake already started")
        self._open()
        if supervisor is None:
            self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread.start()
        else:
            self._thread = supervisor.spawn(
                "kafka", self.serve, restart=True, stall_after=_STALL_S, thread_name=THREAD_NAME
            )

    def _open(self) -> None:
        self._consumer = Consumer(
            {**self._settings.consumer_config(), "error_cb": self._on_error, "stats_cb": self._on_stats}
        )
        if self._settings.reply_topic:
            self._producer = Producer({**self._settings.producer_config(), "error_cb": self._on_error})
        self._consumer.subscribe(
            [self._settings.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self._set_state(IntakeState.JOINING)

    def stop(self, timeout: float = 10.0) -> bool:
        """Finish the message in hand, leave the group and close; False if `apply` outlived `timeout`."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("event=kafka_stop_timeout timeout_s=%s", timeout)
            return False
        return True

    def _run(self) -> None:
        try:
            self.serve()
        except Exception:
            # A bug here must not die silently on a daemon thread; the state shows it stopped.
            log.exception("event=kafka_intake_crashed topic=%s", self._settings.topic)

    def serve(self, heartbeat: Heartbeat | None = None) -> None:
        """Consume until stopped (then return) or until something unexpected raises; the clients
        are closed either way, and opened anew when called again (a supervised restart)."""
        if self._consumer is None:
            self._open()
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
                if heartbeat is not None:
                    heartbeat.beat()
                msg = consumer.poll(self._settings.poll_timeout_s)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    self._on_error(err)
                    continue
                self._handle(msg)
        finally:
            self._consumer = None
            consumer.close()
            if self._producer is not None:
                # Anything still queued answers a message that was not committed: it comes again.
                self._producer.purge()
                self._producer.close()
                self._producer = None
            self._set_state(IntakeState.STOPPED)

    # ------------------------------------------------------------ per message
    def _handle(self, msg: Message) -> None:
        fmt = _header(msg, FORMAT_HEADER) or "v2"
        where = f"topic={msg.topic()} partition={msg.partition()} offset={msg.offset()}"
        try:
            goal_state = decode_goal_state(msg.value(), fmt)
        except DecodeError as exc:
            log.error("event=kafka_poison %s format=%s error=%s", where, fmt, str(exc))
            self._count("poison")
            self._commit(msg)
            return
        started = time.perf_counter()
        try:
            reply = self._apply(goal_state)
        except Exception:
            self._retry_later(msg, where, "apply_failed")
            return
        if self._producer is not None:
            try:
                self._send_reply(msg, fmt, reply)
            except (KafkaException, BufferError):
                # Retried whole: re-applying is a no-op for the core, and the reply goes out again.
                self._retry_later(msg, where, "reply_failed")
                return
        self._backoff = _BACKOFF_MIN_S
        self._count("applied")
        self._commit(msg)
        log.debug(
            "event=kafka_applied %s format=%s took_us=%d",
            where,
            fmt,
            (time.perf_counter() - started) * 1e6,
        )

    def _send_reply(self, msg: Message, fmt: str, reply: goalstate_pb2.GoalStateOperationReply) -> None:
        """Deliver the reply before the commit, so a committed goal state always has its reply out."""
        assert self._producer is not None and self._settings.reply_topic is not None
        failures: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err)

        self._producer.produce(
            self._settings.reply_topic,
            value=reply.SerializeToString(),
            headers=[
                (FORMAT_HEADER, fmt),
                (SOURCE_TOPIC_HEADER, msg.topic()),
                (SOURCE_PARTITION_HEADER, str(msg.partition())),
                (SOURCE_OFFSET_HEADER, str(msg.offset())),
            ],
            on_delivery=delivered,
        )
        if self._producer.flush(_REPLY_FLUSH_TIMEOUT_S) or failures:
            raise KafkaException(failures[0] if failures else KafkaError(KafkaError._MSG_TIMED_OUT))

    def _retry_later(self, msg: Message, where: str, reason: str) -> None:
        """Rewind to the failed message and wait; polling continues, so the group keeps us."""
        self._count(reason)
        suppressed = self._limit.allow(reason)
        if suppressed is not None:
            log.error(
                "event=kafka_%s %s retry_in_s=%.1f suppressed=%d",
                reason,
                where,
                self._backoff,
                suppressed,
                exc_info=True,
            )
        assert self._consumer is not None
        try:
            self._consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
        except KafkaException as exc:
            # Partition revoked meanwhile: the next owner starts from the last commit anyway.
            log.warning("event=kafka_seek_failed %s error=%s", where, str(exc))
        self._stop.wait(self._backoff)
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX_S)

    def _commit(self, msg: Message) -> None:
        assert self._consumer is not None
        try:
            self._consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            # Applied but not committed: a redelivery re-applies it, which the core makes a no-op.
            self._count("commit_failed")
            suppressed = self._limit.allow("commit_failed")
            if suppressed is not None:
                log.warning(
                    "event=kafka_commit_failed topic=%s partition=%s offset=%s error=%s suppressed=%d",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    str(exc),
                    suppressed,
                )

    # ------------------------------------------------------------ callbacks (poll thread)
    def _on_error(self, err: KafkaError) -> None:
        """librdkafka reconnects by itself; only make the outage visible, once per interval."""
        self._count("kafka_errors")
        suppressed = self._limit.allow(f"error:{err.code()}")
        if suppressed is not None:
            log.warning(
                "event=kafka_error code=%s fatal=%s reason=%s suppressed=%d",
                err.name(),
                err.fatal(),
                err.str(),
                suppressed,
            )

    def _on_stats(self, stats_json: str) -> None:
        """librdkafka's statistics: keep each assigned partition's consumer lag (-1: unknown)."""
        try:
            topics = json.loads(stats_json).get("topics", {})
        except ValueError:
            return
        self._lag = consumer_lag(topics)

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("event=kafka_assigned partitions=%s", _names(partitions))
        self._set_state(IntakeState.CONSUMING)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("event=kafka_revoked partitions=%s", _names(partitions))
        if not self._stop.is_set():
            self._set_state(IntakeState.JOINING)

    # ------------------------------------------------------------ bookkeeping
    def _set_state(self, state: IntakeState) -> None:
        if state is not self._state:
            log.info(
                "event=kafka_state topic=%s group=%s from=%s to=%s",
                self._settings.topic,
                self._settings.group_id,
                self._state.value,
                state.value,
            )
            self._state = state

    def _count(self, name: str) -> None:
        self.counters[name] += 1
        if self._metrics is not None:
            self._metrics(name)
