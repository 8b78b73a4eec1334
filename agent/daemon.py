"""aca-agent: wires intake → core → dataplane, signals systemd, and runs until told to stop."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import HealthServicer

from agent import config as config_mod
from agent import logs, sdnotify, startup_check
from agent._pb import goalstate_pb2 as pb
from agent.config import AgentConfig
from agent.control import ControlServer
from agent.core import AgentCore
from agent.dataplane.host import HostDataplane
from agent.intake.controller_client import OnDemandClient, request_resync
from agent.intake.grpc_server import SERVICE, GoalStateService, start_server
from agent.intake.kafka_consumer import KafkaIntake, KafkaSettings
from agent.intake.kafka_security import insecure as kafka_insecure
from agent.intake.kafka_security import security_options as kafka_security_options
from agent.intake.replies import to_reply
from agent.intake.subscribe_service import SubscribeService
from agent.metrics import THREAD_NAME as METRICS_THREAD
from agent.metrics import AgentMetrics
from agent.model.decode import Wire, decode_v1, decode_v2
from agent.model.state import DesiredState
from agent.model.store import Store, recover
from agent.planner.plan import Planner
from agent.reconciler.flows import FlowReconciler
from agent.state_dir_lock import StateDirInUse, lock_state_dir
from agent.supervision import Supervisor, io_thread_liveness

if TYPE_CHECKING:
    from agent.dhcp.driver import DhcpDriver
    from agent.routing.driver import RouteDriver
    from agent.routing.punts import PuntConsumer

log = logging.getLogger("aca.agent")


# After a quarantine, how long the switch keeps the flows the lost state had programmed: the
# controller's resync (AGENT_RESTARTED) refills the state well within it, then the rest goes.
QUARANTINE_KEEP_FLOWS_S = 120.0


class NotAccepted(Exception):
    """The core could not make a goal state durable (e.g. disk full): not to be committed."""


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        # Before anything touches the store, the sockets or the bridge: StateDirInUse if taken.
        self.state_dir_lock = lock_state_dir(cfg.state_dir)
        self.stop_event = threading.Event()
        self.supervisor = Supervisor(on_fatal=self.stop_event.set)
        self.ready = False  # READY=1 sent: listeners up, persisted state programmed
        # Always opens: an unusable file is quarantined, bad rows and journal entries skipped.
        self.store = Store(cfg.state_dir)
        self.state = recover(self.store)
        self.dhcp = _dhcp_driver(cfg, self.state)
        planner = Planner(self.state, cfg.underlay_ip, cfg.routing.mode)
        self.routes = _route_driver(cfg, planner)
        self.dataplane = HostDataplane(
            cfg.ovs, cfg.underlay_ip, self.dhcp, cfg.dhcp.port, self.routes, cfg.routing.port
        )
        self.core = AgentCore(
            self.state,
            self.store,
            planner,
            FlowReconciler(self.dataplane.flows),
            queue_limit_bytes=cfg.core_queue_mb * 1024 * 1024,
        )
        if self.store.recovery.quarantined:  # started empty: keep forwarding until refilled
            self.core.strays_kept_until = time.monotonic() + QUARANTINE_KEEP_FLOWS_S
        self.core.dhcp = self.dhcp
        self.core.routes = self.routes
        self.punts: PuntConsumer | None = None
        self.on_demand: OnDemandClient | None = None
        self.grpc_server: grpc.Server | None = None
        self.subscribe_server: grpc.Server | None = None
        self.kafka: KafkaIntake | None = None
        # grpc.health.v1: SERVING only while `ready` (see run); NOT_SERVING until then.
        self.health = HealthServicer()
        self._serving: bool | None = None
        self._set_serving(False)
        self.metrics: AgentMetrics | None = None
        if cfg.metrics.listen:
            self.metrics = AgentMetrics(self.core, lambda: self.kafka)
            self.core.on_goal_state = self.metrics.observe_goal_state
            self.dataplane.conn.on_bundle = self.metrics.observe_bundle
        self.control = ControlServer(
            cfg.control_socket,
            self.core,
            {
                "host_id": cfg.host_id,
                "underlay_ip": cfg.underlay_ip,
                "bridge": cfg.ovs.bridge,
                "ovs_rundir": cfg.ovs.rundir,
                "started": time.time(),
                "state_dir": cfg.state_dir,
                "state_recovery": dataclasses.asdict(self.store.recovery),
                # Channels allow_insecure let run without authentication (WARNING at start).
                "grpc_insecure": cfg.grpc.insecure,
                "controller_insecure": cfg.controller.insecure,
                "kafka_insecure": kafka_insecure(cfg.kafka),
            },
            live=self._health,
        )

    def start(self) -> None:
        log.info(
            "event=starting host_id=%s underlay_ip=%s state_dir=%s resources=%s",
            self.cfg.host_id, self.cfg.underlay_ip, self.cfg.state_dir, self.state.count(),
        )  # fmt: skip
        if self.metrics is not None:  # first: a slow start can be watched
            self.metrics.serve(self.cfg.metrics.listen)
        self.core.start()
        # Dataplane first: the persisted desired state is programmed (by diff) before any intake.
        self.dataplane.start(self.core)
        if self.routes is not None:
            self._start_punts(self.routes)
        if self.cfg.grpc.listen:
            service = GoalStateService(self.core, self.cfg.underlay_ip, self.cfg.grpc.allowed_clients)
            self.grpc_server = start_server(service, self.cfg.grpc, self.health)
        if self.cfg.kafka.bootstrap_servers:
            self._start_kafka()
        if self.cfg.grpc.subscribe_listen:  # the goal-state endpoint's settings and credentials
            grpc_settings = replace(self.cfg.grpc, listen=self.cfg.grpc.subscribe_listen, workers=4)
            self.subscribe_server = start_server(SubscribeService(self.kafka), grpc_settings)
        self.control.start()
        if self.cfg.controller.address:
            threading.Thread(
                target=request_resync,
                args=(self.cfg.controller, self.stop_event),
                name="aca-resync",
                daemon=True,
            ).start()
        self._supervise()
        quarantined = self.store.recovery.quarantined
        sdnotify.notify(
            "READY=1\nSTATUS=goal states accepted"
            + (f"; desired state quarantined to {quarantined}" if quarantined else "")
        )
        self.ready = True
        log.info(
            "event=ready grpc=%s kafka=%s",
            self.cfg.grpc.listen or "off",
            self.cfg.kafka.bootstrap_servers or "off",
        )

    def _supervise(self) -> None:
        """Register the threads the components own (Kafka's loop registered itself as it started).

        Which check, and why:
        * core, ovsdb, route-punts: loops that go round at least every second even when idle
          (queue timeout, IDL tick, punt wait), so a heartbeat; 30 s without one (the limit the
          watchdog always gave the worker) leaves room for a big goal state or OVSDB update.
        * openflow, control, dhcp-io, route-io: blocked in a read for as long as their peer is
          quiet (a switch with nothing to say, no acactl, no DHCP or punted packet), so a
          missing heartbeat would mean nothing; alive is the check.
        What a death does: every thread here is fatal (the agent exits 1, systemd restarts it,
        the flows stay installed), since none can be resumed in place: the core owns the state,
        the IDL loop its replica and waiting jobs, the reader its connection's pending replies,
        and the C threads are bound anew only by the OpenFlow replay, which the core runs
        (between its stop and start they are "stopped": unhealthy for a moment, not fatal).
        """
        sup, core, ovsdb = self.supervisor, self.core, self.dataplane.ovsdb
        sup.install_excepthook()
        sup.watch("core", thread_name="aca-core", progress=lambda: core.last_loop, stall_after=30.0)
        sup.watch("ovsdb", thread_name="ovsdb-idl", progress=lambda: ovsdb.last_loop, stall_after=30.0)
        conn = self.dataplane.conn
        sup.watch(
            "openflow",
            lambda: conn.reader_alive or "the thread ended",
            thread_name=f"openflow:{conn.path}",
        )
        sup.watch("control", thread_name="aca-control")
        if self.metrics is not None:
            sup.watch("metrics", thread_name=METRICS_THREAD)
        if self.punts is not None:
            from agent.routing.punts import THREAD_NAME as PUNTS_THREAD

            punts = self.punts
            sup.watch(
                "route-punts", thread_name=PUNTS_THREAD, progress=lambda: punts.last_loop, stall_after=30.0
            )
        if self.dhcp is not None:
            sup.watch("dhcp-io", io_thread_liveness(self.dhcp.engine.io_status))
        if self.routes is not None:
            sup.watch("route-io", io_thread_liveness(self.routes.engine.io_status))
        sup.check()

    def _health(self) -> dict[str, object]:
        """For `acactl status`: ready (started, OVS connected, every thread healthy) and each
        thread's state as of the last check."""
        states = self.supervisor.states()
        healthy = all(state == "running" for state in states.values())
        return {
            "ready": self.ready and self.core.dataplane_ready and healthy,
            "threads": states,
            "thread_errors": self.supervisor.errors(),
            "kafka_topics": self.kafka.subscriptions() if self.kafka is not None else [],
        }

    def _start_punts(self, routes: RouteDriver) -> None:
        from agent.routing.punts import PuntConsumer

        routes.cache = self.dataplane.flows
        if self.cfg.controller.address:
            self.on_demand = OnDemandClient(self.cfg.controller)
        core = self.core
        self.punts = PuntConsumer(
            routes.engine,
            routes.knows,
            self.on_demand.request if self.on_demand is not None else None,
            on_hit=(lambda tag, ip: core.call(lambda: core.route_hit(tag, ip))) if routes.on_demand else None,
            release=routes.release,
            hold=self.cfg.routing.hold,
            hold_seconds=self.cfg.routing.hold_seconds,
        )
        routes.punts = self.punts
        self.punts.start()

    def _start_kafka(self) -> None:
        def apply(message: pb.GoalState | pb.GoalStateV2) -> pb.GoalStateOperationReply:
            raw = message.SerializeToString()  # journaled as received (protobuf bytes round-trip)
            # Never refused: a full core makes the consumer wait (uncommitted), not drop it.
            with self.core.admit(len(raw), "kafka", wait=True):
                if isinstance(message, pb.GoalState):
                    result = self.core.apply(decode_v1(message), "kafka-v1", Wire(1, raw))
                else:
                    host_ip = self.cfg.underlay_ip
                    result = self.core.apply(decode_v2(message, host_ip), "kafka-v2", Wire(2, raw, host_ip))
            if result.retry:  # not durably accepted: leave it uncommitted, the intake retries it
                raise NotAccepted("the goal state was not stored; it is retried")
            return to_reply(result)

        settings = KafkaSettings(
            bootstrap_servers=self.cfg.kafka.bootstrap_servers,
            topic=self.cfg.kafka_topic,
            group_id=self.cfg.kafka_group,
            reply_topic=self.cfg.kafka.reply_topic or None,
            extra={**self.cfg.kafka.options, **kafka_security_options(self.cfg.kafka)},
            host_ip=self.cfg.underlay_ip,
        )

        def persist(topic: str, key: str | None) -> None:
            """On the core's thread, which owns the store's connection."""
            store = self.store
            if key is None:
                self.core.call(lambda: store.drop_subscription(topic)).result(30)
            else:
                self.core.call(lambda: store.set_subscription(topic, key)).result(30)

        # Kafka's counters (applied, poison, ...) show in `acactl status` next to the core's.
        self.kafka = KafkaIntake(
            settings,
            apply,
            metrics=lambda name: self.core.counters.update([f"kafka_{name}"]),
            shared=self.core.call(self.store.subscriptions).result(30),  # the core owns the store
            persist=persist,
        )
        self.kafka.start(self.supervisor)

    def reload(self) -> None:
        """SIGHUP / systemctl reload: re-read the config; the log level applies at once."""
        if not self.cfg.config_path:
            return
        try:
            fresh = config_mod.load_file(self.cfg.config_path)
        except (OSError, ValueError) as exc:
            log.error("event=reload_failed error=%s", str(exc))
            return
        self.cfg = replace(self.cfg, log_level=fresh.log_level)
        logs.set_level(fresh.log_level)
        log.warning("event=reloaded log_level=%s", fresh.log_level)

    def _set_serving(self, serving: bool) -> None:
        """The gRPC health status of the server ("") and of the goal-state service."""
        if serving is self._serving:
            return
        self._serving = serving
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE):
            self.health.set(service, status)
        log.info("event=health serving=%s", serving)

    def run(self) -> int:
        """Until stopped (0) or a supervised thread died (1, systemd restarts the agent): check
        the threads every second and ping the watchdog only while all of them are healthy. The
        gRPC health says SERVING while, in addition, the switch holds the desired state."""
        interval = sdnotify.watchdog_interval()
        while not self.stop_event.wait(min(interval or 1.0, 1.0)):
            healthy = self.supervisor.check()
            self._set_serving(self.ready and self.core.dataplane_ready and healthy)
            if healthy and interval:
                sdnotify.notify("WATCHDOG=1")
        if self.supervisor.fatal:
            log.critical("event=exiting reason=thread_died thread=%s", self.supervisor.fatal)
            return 1
        return 0

    def stop(self) -> None:
        sdnotify.notify("STOPPING=1")
        self.stop_event.set()
        self.supervisor.stop()
        self.health.enter_graceful_shutdown()  # NOT_SERVING for every service from here on
        for server in (self.subscribe_server, self.grpc_server):
            if server is not None:
                server.stop(grace=2).wait(3)
        if self.metrics is not None:
            self.metrics.stop()
        if self.kafka is not None:
            self.kafka.stop(5)
        self.control.stop()
        if self.punts is not None:
            self.punts.stop()
        if self.on_demand is not None:
            self.on_demand.close()
        self.core.stop()
        # Flows stay installed: the dataplane keeps forwarding while the agent is down.
        self.dataplane.stop()
        self.store.close()
        log.info("event=stopped")


def _dhcp_driver(cfg: AgentConfig, state: DesiredState) -> DhcpDriver | None:
    """The DHCP responder's driver, or None when DHCP is off or the C engine is not built."""
    if not cfg.dhcp.enabled:
        return None
    try:
        from agent.dhcp.driver import DhcpDriver
        from agent.dhcp.leases import Settings
    except ImportError as exc:
        log.error(
            'event=dhcp_unavailable error=%s hint="reinstall the package to build agent._native"', str(exc)
        )
        return None
    settings = Settings(cfg.dhcp.mtu, cfg.dhcp.lease_time, cfg.dhcp.domain)
    driver = DhcpDriver(state, settings, direct=cfg.dhcp.direct_replies)
    driver.engine.set_rate_limit(cfg.dhcp.rate, cfg.dhcp.burst)
    return driver


def _route_driver(cfg: AgentConfig, planner: Planner) -> RouteDriver | None:
    """The route fast path's driver, or None when it is off or the C engine is not built."""
    if not cfg.routing.fast_path:
        return None
    try:
        from agent.routing.driver import RouteDriver
        from agent.routing.engine import RouteEngine
    except ImportError as exc:
        log.error("event=route_fast_path_unavailable error=%s", str(exc))
        return None
    engine = RouteEngine(cfg.routing.queue)
    return RouteDriver(planner, engine, cfg.routing.cache_idle_timeout)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config_mod.from_args(argv)
        insecure = startup_check.check(cfg)  # before the state directory, OVS or any socket
    except (OSError, ValueError) as exc:
        print(f"aca-agent: bad configuration: {exc}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_file)
    for line in insecure:
        log.warning(line)
    # Desired state and flow mirrors are large, long-lived object graphs: default GC thresholds
    # would rescan them over and over while a big goal state is planned.
    gc.set_threshold(50_000, 20, 100)
    try:
        agent = Agent(cfg)
    except StateDirInUse as exc:
        log.error("event=state_dir_in_use state_dir=%s error=%s", cfg.state_dir, str(exc))
        print(f"aca-agent: {exc}", file=sys.stderr)
        return os.EX_TEMPFAIL  # a unit's Restart= retries: the other agent may be going away
    gc.freeze()  # what start-up loaded is permanent; keep it out of every collection
    signal.signal(signal.SIGTERM, lambda *_: agent.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop_event.set())
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=agent.reload, daemon=True).start())
    try:
        agent.start()
        return agent.run()
    except Exception:
        log.exception("event=fatal")
        return 1
    finally:
        agent.stop()


if __name__ == "__main__":
    sys.exit(main())
