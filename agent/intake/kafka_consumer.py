"""Kafka intake: the legacy Alcor path, one topic per host carrying serialized goal states.

Delivery is at-least-once: a message's offset is committed only after the core has applied
(and persisted) its goal state and, when configured, its reply has been delivered. A crash in
between redelivers the message; the core makes re-applying it a no-op. Undecodable messages are
committed past, so one bad record can never wedge the host.

Besides its own topic the intake consumes the shared topics the controller subscribed the host
to (``subscribe``/``unsubscribe``, from ``PushNodeSubscribeInfo``), in the same consumer group,
so one re-subscribe of the one consumer adds or removes a topic: the group rebalances and every
topic resumes from its committed offset, i.e. just after the last message applied. Which records
of a shared topic this host acts on: ``agent.intake.subscriptions``. Subscription changes, like
every other use of the consumer, run on the consuming thread between two messages.
"""

from __future__ import annotations

import collections
import enum
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from google.protobuf.message import DecodeError

from agent._pb import goalstate_pb2
from agent.intake.subscriptions import Route, route, topic_problem
from agent.model.resources import Status
from agent.supervision import Heartbeat, Supervisor

log = logging.getLogger("aca.kafka")

DecodedGoalState = goalstate_pb2.GoalState | goalstate_pb2.GoalStateV2
ApplyFn = Callable[[DecodedGoalState], goalstate_pb2.GoalStateOperationReply]
MetricsFn = Callable[[str], None]
# Records a subscription change durably (key None: the topic is dropped); raises if it cannot.
PersistFn = Callable[[str, str | None], None]
Answer = tuple[Status, str]  # a subscription request's status and, unless SUCCESS, the reason

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

# How long a broker may take to say whether a topic exists and may be read.
_METADATA_TIMEOUT_S = 10.0
_LAG_REFRESH_S = 1.0  # how often the consuming thread updates the lag figures acactl shows


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
    host_ip: str = ""  # host_resources' name for this host, and its key on shared topics by default

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

    def __init__(
        self,
        config: KafkaSettings,
        apply: ApplyFn,
        metrics: MetricsFn | None = None,
        shared: Mapping[str, str] | None = None,
        persist: PersistFn | None = None,
    ) -> None:
        """``shared``: the shared topics to consume from the start, each with this host's key on
        it ("" for the default); ``persist`` records every later change before it takes effect."""
        self._settings = config
        self._apply = apply
        self._metrics = metrics
        self._shared: dict[str, str] = dict(shared or {})
        self._persist = persist
        self._commands: queue.Queue[tuple[Callable[[Consumer], Answer], Future]] = queue.Queue()
        self._committed: dict[tuple[str, int], int] = {}  # (topic, partition) → next offset, as committed
        self._lags: dict[str, dict[str, int | None]] = {}  # see subscriptions
        self._lags_at = 0.0
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

    # ------------------------------------------------------------ shared topics (any thread)
    def subscribe(self, topic: str, key: str, timeout: float = 30.0) -> Answer:
        """Consume ``topic`` from now on, next to what is consumed already (which loses nothing:
        the rebalance resumes every topic at its committed offset). FAILURE if the broker does
        not know the topic or refuses it; the subscription is persisted before it is used."""
        problem = self._own_topic_problem(topic)
        if problem:
            return Status.INVALID_ARG, problem
        return self._run_on_consumer(lambda consumer: self._subscribe(consumer, topic, key), timeout)

    def unsubscribe(self, topic: str, timeout: float = 30.0) -> Answer:
        """Stop consuming ``topic``. Runs between two messages, so whatever was received from it
        has been applied and committed; a topic not subscribed is already gone (SUCCESS)."""
        problem = self._own_topic_problem(topic)
        if problem:
            return Status.INVALID_ARG, problem
        return self._run_on_consumer(lambda consumer: self._unsubscribe(consumer, topic), timeout)

    def subscriptions(self) -> list[dict[str, object]]:
        """Each consumed topic with its position (the next offset to apply: what was applied is
        committed), the end of the topic and the lag between them, summed over partitions, as
        the consuming thread last saw them (within a second); None while not known yet."""
        topics = [self._settings.topic, *sorted(self._shared.copy())]  # changed by the consuming thread
        lags = self._lags
        unknown = {"position": None, "end": None, "lag": None}
        return [
            {
                "topic": topic,
                "shared": topic != self._settings.topic,
                "key": self._key(topic) if topic != self._settings.topic else None,
                **lags.get(topic, unknown),
            }
            for topic in topics
        ]

    def _own_topic_problem(self, topic: str) -> str:
        problem = topic_problem(topic)
        if problem:
            return problem
        if topic == self._settings.topic:
            return f"topic {topic!r} is this host's own goal state topic, always consumed"
        if topic == self._settings.reply_topic:
            return f"topic {topic!r} is this host's reply topic"
        return ""

    def _key(self, topic: str) -> str:
        return self._shared.get(topic) or self._settings.host_ip

    def _run_on_consumer(self, fn: Callable[[Consumer], Answer], timeout: float) -> Answer:
        fut: Future = Future()
        self._commands.put((fn, fut))
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()  # not run later behind the caller's back (unless already running)
            return Status.FAILURE, f"the Kafka intake did not take the request within {timeout:.0f}s"
        except Exception as exc:
            return Status.FAILURE, f"{type(exc).__name__}: {exc}"

    # ------------------------------------------------------------ shared topics (consuming thread)
    def _topics(self) -> list[str]:
        return [self._settings.topic, *sorted(self._shared)]

    def _resubscribe(self, consumer: Consumer) -> None:
        consumer.subscribe(
            self._topics(), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )

    def _subscribe(self, consumer: Consumer, topic: str, key: str) -> Answer:
        refused = self._broker_refuses(consumer, topic)
        if refused:
            return Status.FAILURE, refused
        known = topic in self._shared
        if self._persist is not None and self._shared.get(topic) != key:
            self._persist(topic, key)
        self._shared[topic] = key
        if not known:
            self._resubscribe(consumer)
        log.info(
            "event=kafka_subscribed topic=%s key=%s topics=%d", topic, self._key(topic), len(self._shared) + 1
        )
        return Status.SUCCESS, ""

    def _unsubscribe(self, consumer: Consumer, topic: str) -> Answer:
        if topic not in self._shared:
            return Status.SUCCESS, ""
        if self._persist is not None:
            self._persist(topic, None)
        del self._shared[topic]
        self._resubscribe(consumer)
        log.info("event=kafka_unsubscribed topic=%s topics=%d", topic, len(self._shared) + 1)
        return Status.SUCCESS, ""

    @staticmethod
    def _broker_refuses(consumer: Consumer, topic: str) -> str:
        """Why the broker will not serve ``topic`` (unknown, not authorized, unreachable), or ""."""
        try:
            metadata = consumer.list_topics(topic, timeout=_METADATA_TIMEOUT_S)
        except KafkaException as exc:
            return f"broker: {exc.args[0].str() if exc.args else exc}"
        found = metadata.topics.get(topic)
        if found is None:
            return "broker: topic not in the metadata"
        if found.error is not None:
            return f"broker: {found.error.str()}"
        return ""

    def _refresh_lags(self, consumer: Consumer) -> None:
        """Local figures only (no broker round trip on the consuming thread): the position
        librdkafka holds, else the last offset this intake committed, and the end of each
        partition as its last fetch response gave it."""
        now = time.monotonic()
        if now - self._lags_at < _LAG_REFRESH_S:
            return
        self._lags_at = now
        lags: dict[str, dict[str, int | None]] = {}
        for tp in consumer.position(consumer.assignment()):
            position = tp.offset if tp.offset >= 0 else self._committed.get((tp.topic, tp.partition))
            _low, end = consumer.get_watermark_offsets(tp, cached=True) or (None, None)
            row = lags.setdefault(tp.topic, {"position": 0, "end": 0, "lag": 0})
            if position is None or end is None or end < 0 or row["lag"] is None:
                row.update(position=None, end=None, lag=None)
                continue
            row["position"] += position  # type: ignore[operator]
            row["end"] += end  # type: ignore[operator]
            row["lag"] += max(end - position, 0)  # type: ignore[operator]
        self._lags = lags

    def _run_commands(self, consumer: Consumer) -> None:
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(consumer))
            except Exception as exc:
                log.warning("event=kafka_request_failed error=%r", str(exc))
                fut.set_exception(exc)

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
        self._resubscribe(self._consumer)
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
                self._run_commands(consumer)
                self._refresh_lags(consumer)
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
        received_ms = time.time() * 1e3
        fmt = _header(msg, FORMAT_HEADER) or "v2"
        topic = msg.topic()
        where = f"topic={topic} partition={msg.partition()} offset={msg.offset()}"
        try:
            goal_state = decode_goal_state(msg.value(), fmt)
        except DecodeError as exc:
            log.error("event=kafka_poison %s format=%s error=%s", where, fmt, str(exc))
            self._count("poison")
            self._commit(msg)
            return
        if topic in self._shared:
            verdict = route(msg.key(), self._key(topic), goal_state, self._settings.host_ip)
            if verdict is not Route.APPLY:
                log.debug("event=kafka_skipped %s reason=%s", where, verdict.value)
                self._count(f"skipped_{verdict.value}")
                self._commit(msg)
                return
        started = time.perf_counter()
        try:
            reply = self._apply(goal_state)
        except Exception:
            self._retry_later(msg, where, "apply_failed")
            return
        applied = time.perf_counter()
        if self._producer is not None:
            try:
                self._send_reply(msg, fmt, reply)
            except (KafkaException, BufferError):
                # Retried whole: re-applying is a no-op for the core, and the reply goes out again.
                self._retry_later(msg, where, "reply_failed")
                return
        replied = time.perf_counter()
        self._backoff = _BACKOFF_MIN_S
        self._count("applied")
        self._commit(msg)
        if log.isEnabledFor(logging.DEBUG):  # each stage of the round, for latency investigations
            log.debug(
                "event=kafka_applied %s format=%s polled_after_ms=%d apply_us=%d reply_us=%d commit_us=%d",
                where, fmt, received_ms - msg.timestamp()[1], (applied - started) * 1e6,
                (replied - applied) * 1e6, (time.perf_counter() - replied) * 1e6,
            )  # fmt: skip

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
            self._committed[(msg.topic(), msg.partition())] = msg.offset() + 1
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
