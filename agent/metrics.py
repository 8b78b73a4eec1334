"""Prometheus metrics: `[metrics] listen`, every metric listed in docs/metrics.md.

Most values are read at scrape time from what the agent already counts for `acactl status`
(the core's counters, the C engines' counters, the flow mirror, the punt consumer), so there
is one count of each thing and a scrape costs the worker nothing. Only what needs a
distribution is observed as it happens: each goal state (the core's ``on_goal_state``) and
each committed OpenFlow bundle (the connection's ``on_bundle``).

The scrape runs on the HTTP server's thread while the worker changes the mirror and the state:
it reads them through ``list(...)`` copies (one C-level pass under the GIL, never a Python-level
iteration of a dict being changed), so a value is at worst one goal state old.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.core import AgentCore, MessageResult
from agent.model.resources import Status
from agent.planner.pipeline import TABLE_NAMES

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from agent.intake.kafka_consumer import KafkaIntake

log = logging.getLogger("aca.metrics")

THREAD_NAME = "aca-metrics"
DEFAULT_HOST = "127.0.0.1"  # a bare port listens on loopback only
# Seconds: from a one-resource goal state (~100 µs) to a 100k-flow resync (tens of seconds).
_TIME_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # fmt: skip
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000)
# A goal state's outcome is its most severe resource status (or what kept it from finishing).
_SEVERITY = (Status.FAILURE, Status.INVALID_ARG, Status.OUT_OF_ORDER, Status.PENDING)
# The core's own counters shown as plain counters (the rest are read from where they live).
_CORE_COUNTERS = {
    "openflow_reconnects": "Reconnects of the OpenFlow connection to ovs-vswitchd",
    "grpc_undecodable": "gRPC requests whose bytes were not a goal state (INVALID_ARGUMENT)",
    "journal_failures": "Goal states that could not be journaled (answered FAILURE, retry)",
    "plan_failures": "Resources or owners whose planning raised",
    "owner_retries": "Failed owners re-programmed by the repair timer",
    "repairs_pending": "Repairs that did not bring the switch in line and were rescheduled",
}
_KAFKA_RESULTS = ("applied", "poison", "apply_failed", "reply_failed", "commit_failed")


def parse_listen(listen: str) -> tuple[str, int]:
    """``PORT`` (loopback), ``HOST:PORT`` or ``[V6]:PORT`` → (host, port); ValueError if bad."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    host = host.removeprefix("[").removesuffix("]")
    if not port.isdigit() or not 0 < int(port) <= 0xFFFF or not host:
        raise ValueError(f"[metrics] listen {listen!r} is not PORT, HOST:PORT or [V6]:PORT")
    return host, int(port)


def outcome(result: MessageResult) -> str:
    if result.crashed:
        return "crashed"
    if result.retry:
        return "not_stored"
    seen = {s.status for s in result.statuses}
    return next((s.name.lower() for s in _SEVERITY if s in seen), "success")


class AgentMetrics:
    """The registry, the observers the core and the OpenFlow connection call, the HTTP server."""

    def __init__(self, core: AgentCore, kafka: Callable[[], KafkaIntake | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.goal_states = Counter(
            "aca_goal_states",
            "Goal states answered, by intake and outcome",
            ["source", "outcome"],
            registry=r,
        )
        self.statuses = Counter(
            "aca_resource_statuses", "Resource statuses answered, by type and status", ["type", "status"],
            registry=r,
        )  # fmt: skip
        self.timings = Histogram(
            "aca_goal_state_duration_seconds",
            "Per goal state: config (state + journal), dataplane (plan + bundle), total (receipt to reply)",
            ["phase"], buckets=_TIME_BUCKETS, registry=r,
        )  # fmt: skip
        self.bundle_messages = Histogram(
            "aca_openflow_bundle_messages", "Flow-mods per committed OpenFlow bundle",
            buckets=_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.bundle_commit = Histogram(
            "aca_openflow_bundle_commit_seconds",
            "From a bundle's CLOSE request to OVS's COMMIT reply (the switch's check and commit)",
            buckets=_TIME_BUCKETS, registry=r,
        )  # fmt: skip
        r.register(AgentCollector(core, kafka))
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU, open fds
        self._server: WSGIServer | None = None

    # ------------------------------------------------------------ observers (hot paths: cheap)
    def observe_goal_state(self, source: str, result: MessageResult) -> None:
        self.goal_states.labels(source, outcome(result)).inc()
        tally = collections.Counter((s.resource_type.name, s.status.name) for s in result.statuses)
        for (rtype, status), n in tally.items():
            self.statuses.labels(rtype, status).inc(n)
        if not result.crashed:
            self.timings.labels("config").observe(result.config_us / 1e6)
            self.timings.labels("dataplane").observe(result.dataplane_us / 1e6)
            self.timings.labels("total").observe(result.total_us / 1e6)

    def observe_bundle(self, messages: int, commit_s: float) -> None:
        self.bundle_messages.observe(messages)
        self.bundle_commit.observe(commit_s)

    # ------------------------------------------------------------ HTTP
    def serve(self, listen: str) -> None:
        host, port = parse_listen(listen)
        self._server, thread = start_http_server(port, host, self.registry)
        thread.name = THREAD_NAME
        log.info("event=metrics_listening address=%s port=%d", host, port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class AgentCollector(Collector):
    """What `acactl status` shows, read at scrape time."""

    def __init__(self, core: AgentCore, kafka: Callable[[], KafkaIntake | None]) -> None:
        self.core = core
        self.kafka = kafka

    def collect(self) -> Iterator[Metric]:
        yield from self._core()
        yield from self._flows()
        yield from self._kafka()
        yield from self._dhcp()
        yield from self._routing()

    def _core(self) -> Iterator[Metric]:
        core = self.core
        counters = dict(core.counters)
        for key, doc in _CORE_COUNTERS.items():
            yield _counter(f"aca_{key}", doc, counters.get(key, 0))
        yield _gauge(
            "aca_dataplane_ready", "1 when the switch holds the desired state's flows", core.dataplane_ready
        )
        yield _gauge("aca_owners_failed", "Owners whose last programming failed", len(core.failed))
        planner = core.planner
        pending = sum(1 for p in list(core.state.ports) if planner.is_pending(p))
        yield _gauge("aca_ports_pending", "Ports whose interface is not on the bridge yet", pending)
        yield _gauge("aca_worker_queue_depth", "Work items waiting for the core's worker", core.queue_depth)

    def _flows(self) -> Iterator[Metric]:
        reconciler = self.core.reconciler
        by_table = collections.Counter(key[0] for key in list(reconciler.installed))
        tables = GaugeMetricFamily(
            "aca_flows_installed", "Flows the agent installed, by table", labels=["table"]
        )
        for table, n in sorted(by_table.items()):
            tables.add_metric([TABLE_NAMES.get(table, str(table))], n)
        yield tables
        by_kind: collections.Counter[str] = collections.Counter()
        for (kind, _oid), flows in list(reconciler.desired.items()):
            by_kind[kind.name.lower()] += len(flows)
        kinds = GaugeMetricFamily(
            "aca_flows_installed_by_owner_kind", "Flows the agent installed, by owner kind", labels=["kind"]
        )
        for kind, n in sorted(by_kind.items()):
            kinds.add_metric([kind], n)
        yield kinds

    def _kafka(self) -> Iterator[Metric]:
        intake = self.kafka()
        if intake is None:
            return
        counts = dict(intake.counters)
        yield _counter("aca_kafka_errors", "Errors librdkafka reported (it reconnects by itself)",
                       counts.get("kafka_errors", 0))  # fmt: skip
        messages = CounterMetricFamily(
            "aca_kafka_messages", "Kafka records handled, by result", labels=["result"]
        )
        for result in _KAFKA_RESULTS:
            messages.add_metric([result], counts.get(result, 0))
        yield messages
        lag = GaugeMetricFamily(
            "aca_kafka_consumer_lag", "Records behind the partition's end (librdkafka statistics)",
            labels=["topic", "partition"],
        )  # fmt: skip
        for (topic, partition), n in sorted(intake.lag().items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag

    def _dhcp(self) -> Iterator[Metric]:
        dhcp = self.core.dhcp
        if dhcp is None:
            return
        counts = dhcp.engine.counters()
        requests = CounterMetricFamily(
            "aca_dhcp_requests", "DHCP requests received, by type", labels=["type"]
        )
        replies = CounterMetricFamily("aca_dhcp_replies", "DHCP replies sent, by type", labels=["type"])
        drops = CounterMetricFamily(
            "aca_dhcp_drops", "Frames the DHCP responder dropped, by reason", labels=["reason"]
        )
        for name, n in counts.items():
            kind, _, what = name.partition("_")
            if kind == "rx" and what != "frames":
                requests.add_metric([what], n)
            elif kind == "tx" and what != "errors":
                replies.add_metric([what], n)
            elif kind == "drop":
                drops.add_metric([what], n)
        yield from (requests, replies, drops)
        yield _counter("aca_dhcp_frames", "Frames the DHCP responder read", counts.get("rx_frames", 0))
        yield _counter("aca_dhcp_send_errors", "DHCP replies the kernel refused", counts.get("tx_errors", 0))

    def _routing(self) -> Iterator[Metric]:
        routes = self.core.routes
        if routes is None:
            return
        counts = routes.engine.counters()
        yield _counter("aca_route_frames", "Frames the route fast path read", counts.get("rx_frames", 0))
        packets = CounterMetricFamily(
            "aca_route_packets",
            "Routed packets the C engine forwarded or punted to the agent",
            labels=["result"],
        )
        for result in ("forwarded", "punted"):
            packets.add_metric([result], counts.get(result, 0))
        yield packets
        drops = CounterMetricFamily(
            "aca_route_drops",
            "Routed packets dropped, by where (engine, hold) and reason",
            labels=["where", "reason"],
        )
        for name, n in counts.items():
            if name.startswith("drop_"):
                drops.add_metric(["engine", name.removeprefix("drop_")], n)
        punts = routes.punts.stats() if routes.punts is not None else {}
        for name, n in punts.items():
            if name.startswith("dropped_"):
                drops.add_metric(["hold", name.removeprefix("dropped_")], n)
        yield drops
        yield _counter(
            "aca_route_send_errors", "Routed packets the kernel refused", counts.get("tx_errors", 0)
        )
        yield _counter("aca_route_cache_installs", "On-demand host routes installed", routes.cache_installs)
        if routes.punts is not None:
            yield _counter("aca_route_on_demand_requests", "Controller requests for unknown destinations",
                           punts.get("requests", 0))  # fmt: skip
            replies = CounterMetricFamily(
                "aca_route_on_demand_replies", "Controller answers to those requests", labels=["result"]
            )
            for result in ("success", "failure"):
                replies.add_metric([result], punts.get(f"replies_{result}", 0))
            yield replies
            yield _gauge(
                "aca_route_packets_held", "Punted packets waiting for the controller", punts.get("holding", 0)
            )
