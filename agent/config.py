"""Agent configuration: a TOML file (every key optional) with command-line flags on top."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from agent.intake.controller_client import ControllerSettings
from agent.intake.grpc_server import GrpcSettings
from agent.metrics import parse_listen
from agent.version import version


@dataclass(frozen=True)
class OvsSettings:
    db: str = "unix:/var/run/openvswitch/db.sock"
    rundir: str = "/var/run/openvswitch"  # where <bridge>.mgmt (the OpenFlow socket) lives
    bridge: str = "br-int"
    datapath_type: str = "system"
    tunnel_port: str = "vxlan0"
    # How long a bundle or a flow dump may wait for ovs-vswitchd; past it the outcome is unknown
    # and the agent resyncs (docs/reliability.md). Below the unit's WatchdogSec (30 s): the
    # worker waits this long at most before its next heartbeat.
    openflow_timeout: float = 20.0


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = ""  # empty: Kafka intake off
    topic: str = ""  # default host-<host id>
    group_id: str = ""  # default aca-agent-<host id>
    reply_topic: str = ""  # empty: no replies on Kafka
    options: dict[str, str] = field(default_factory=dict)  # librdkafka passthrough (not the keys below)
    # Security (agent/intake/kafka_security.py maps them to librdkafka's keys).
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_SSL or SASL_PLAINTEXT
    ssl_ca: str = ""  # CA that signed the brokers' certificates (empty: system roots)
    ssl_cert: str = ""  # this agent's client certificate (SSL client authentication)
    ssl_key: str = ""
    sasl_mechanism: str = ""  # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password_file: str = ""  # the password, in a file only its owner may read (0600)
    allow_insecure: bool = False  # PLAINTEXT / SASL_PLAINTEXT to a broker on another host


@dataclass(frozen=True)
class DhcpConfig:
    enabled: bool = True  # answer DHCP for local ports (the C responder on an internal port)
    port: str = "aca-dhcp"  # the agent's internal OVS port the responder reads and writes
    mtu: int = 1450  # option 26: the overlay MTU
    lease_time: int = 86400
    domain: str = ""  # option 15 unless a subnet's extra options give one
    rate: int = 100  # requests per second per VM port (0: unlimited)
    burst: int = 200
    # Replies leave straight out of the asking VM's device (OVS carries the requests only);
    # false: back through OVS as packet-ins' answers would (docs/dhcp-bench.md measures both).
    direct_replies: bool = True

    def __post_init__(self) -> None:
        """Values no DHCP option can carry would fail every subnet's profile: refused at start."""
        if not 68 <= self.mtu <= 0xFFFF:
            raise ValueError(f"[dhcp] mtu {self.mtu} is not in 68..65535")
        if not 0 < self.lease_time <= 0xFFFFFFFF:
            raise ValueError(f"[dhcp] lease_time {self.lease_time} is not in 1..4294967295")
        if len(self.domain.encode()) > 255:
            raise ValueError("[dhcp] domain is longer than 255 bytes (one DHCP option)")


@dataclass(frozen=True)
class RoutingConfig:
    fast_path: bool = True  # punt routed packets without a flow to the C engine (else: drop)
    port: str = "aca-route"  # the agent's internal OVS port the route engine reads and writes
    mode: str = "proactive"  # or "on_demand": neighbour host routes only when used, with idle timeout
    # seconds, for the on_demand host-route flows; 0: none cached, every routed packet to a
    # neighbour goes through the C engine (no flow churn at all, at the C path's rate)
    cache_idle_timeout: int = 10
    queue: int = 256  # punted packets the C engine queues for the agent
    hold: int = 256  # packets the agent holds while it asks the controller
    hold_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in ("proactive", "on_demand"):
            raise ValueError(f"[routing] mode must be proactive or on_demand, not {self.mode!r}")
        if not 0 <= self.cache_idle_timeout <= 0xFFFF:
            raise ValueError(f"[routing] cache_idle_timeout {self.cache_idle_timeout} is not in 0..65535")


@dataclass(frozen=True)
class MetricsConfig:
    # Prometheus metrics over HTTP (docs/metrics.md). Empty: off. A bare port listens on
    # 127.0.0.1 only; any other address must be written out ("0.0.0.0:9464", "[::]:9464").
    listen: str = ""

    def __post_init__(self) -> None:
        if self.listen:
            parse_listen(self.listen)  # ValueError naming the key


@dataclass(frozen=True)
class AgentConfig:
    host_id: str = ""
    underlay_ip: str = ""
    state_dir: str = "/var/lib/aca-agent"
    control_socket: str = "/run/aca-agent/acactl.sock"
    log_level: str = "INFO"
    log_file: str = ""  # empty: stderr (the journal under systemd)
    # Wire MB of goal states the core holds at once, parsed to answered (agent/core.py): a push
    # beyond it is refused with RESOURCE_EXHAUSTED, Kafka waits. Memory ceiling: docs/reliability.md.
    core_queue_mb: int = 64
    config_path: str = ""
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    ovs: OvsSettings = field(default_factory=OvsSettings)
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    dhcp: DhcpConfig = field(default_factory=DhcpConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def kafka_topic(self) -> str:
        return self.kafka.topic or f"host-{self.host_id}"

    @property
    def kafka_group(self) -> str:
        return self.kafka.group_id or f"aca-agent-{self.host_id}"


def _section(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown key(s) in [{where}]: {', '.join(sorted(unknown))}")
    return cls(**values)


def load_file(path: str) -> AgentConfig:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    agent = dict(data.get("agent", {}))
    controller = dict(data.get("controller", {}))
    if "controller" in agent:  # the address's old place, before [controller] had TLS settings
        if "address" in controller:
            raise ValueError(
                "the controller address is set twice: keep [controller] address, drop [agent] controller"
            )
        controller["address"] = agent.pop("controller")
    grpc_section = dict(data.get("grpc", {}))
    if "max_message_mb" in grpc_section:
        grpc_section["max_message_bytes"] = int(grpc_section.pop("max_message_mb")) * 1024 * 1024
    for where, key, value in (
        ("agent", "core_queue_mb", agent.get("core_queue_mb", 1)),
        ("grpc", "max_message_mb", grpc_section.get("max_message_bytes", 1)),
        ("grpc", "maximum_concurrent_rpcs", grpc_section.get("maximum_concurrent_rpcs", 1)),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"[{where}] {key} must be a positive integer, not {value!r}")
    unknown = set(data) - {"agent", "ovs", "grpc", "controller", "kafka", "dhcp", "routing", "metrics"}
    if unknown:
        raise ValueError(f"unknown section(s): {', '.join(sorted(unknown))}")
    nested = set(agent) & {"ovs", "grpc", "kafka", "dhcp", "routing", "metrics", "config_path"}
    if nested:
        raise ValueError(f"[agent] cannot set {', '.join(sorted(nested))}")
    return replace(
        _section(AgentConfig, agent, "agent"),
        config_path=path,
        ovs=_section(OvsSettings, dict(data.get("ovs", {})), "ovs"),
        grpc=_section(GrpcSettings, grpc_section, "grpc"),
        controller=_section(ControllerSettings, controller, "controller"),
        kafka=_section(KafkaConfig, dict(data.get("kafka", {})), "kafka"),
        dhcp=_section(DhcpConfig, dict(data.get("dhcp", {})), "dhcp"),
        routing=_section(RoutingConfig, dict(data.get("routing", {})), "routing"),
        metrics=_section(MetricsConfig, dict(data.get("metrics", {})), "metrics"),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aca-agent", description="Alcor host agent")
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("--config", help="TOML config file (every key optional)")
    p.add_argument("--host-id")
    p.add_argument("--underlay-ip", help="this host's tunnel endpoint address")
    p.add_argument("--state-dir")
    p.add_argument("--control-socket", help="unix socket acactl talks to")
    p.add_argument("--log-level")
    p.add_argument("--log-file")
    p.add_argument("--controller", help="controller host:port for RequestGoalStates")
    p.add_argument("--controller-ca", help="CA of the controller's certificate")
    p.add_argument("--controller-cert", help="this agent's client certificate for the controller")
    p.add_argument("--controller-key", help="its key")
    p.add_argument("--controller-server-name", help="name expected in the controller's certificate")
    p.add_argument("--grpc-listen", help="address:port or unix:PATH")
    p.add_argument("--grpc-tls-cert", help="the gRPC intake's server certificate")
    p.add_argument("--grpc-tls-key", help="its key")
    p.add_argument("--grpc-tls-client-ca", help="CA that signs the clients allowed to push (mutual TLS)")
    p.add_argument(
        "--subscribe-listen", help="SubscribeInfoProvisioner: address:port or unix:PATH ('' turns it off)"
    )
    p.add_argument("--ovsdb", help="OVSDB remote, e.g. unix:/var/run/openvswitch/db.sock")
    p.add_argument("--ovs-rundir", help="directory holding <bridge>.mgmt")
    p.add_argument("--bridge")
    p.add_argument("--datapath-type", choices=["system", "netdev"])
    p.add_argument("--openflow-timeout", type=float, help="seconds a bundle or dump may wait for OVS")
    p.add_argument("--kafka-bootstrap")
    p.add_argument("--kafka-topic")
    p.add_argument("--kafka-reply-topic")
    p.add_argument("--no-dhcp", action="store_true", help="do not answer DHCP (no responder port)")
    p.add_argument("--routing-mode", choices=["proactive", "on_demand"])
    p.add_argument("--no-route-fast-path", action="store_true", help="drop routed packets without a flow")
    p.add_argument("--metrics-listen", help="Prometheus metrics on PORT (loopback) or HOST:PORT")
    return p


def from_args(argv: list[str] | None = None) -> AgentConfig:
    args = parser().parse_args(argv)
    cfg = load_file(args.config) if args.config else AgentConfig()
    top = {
        "host_id": args.host_id,
        "underlay_ip": args.underlay_ip,
        "state_dir": args.state_dir,
        "control_socket": args.control_socket,
        "log_level": args.log_level,
        "log_file": args.log_file,
    }
    controller = {
        "address": args.controller,
        "ca": args.controller_ca,
        "cert": args.controller_cert,
        "key": args.controller_key,
        "server_name": args.controller_server_name,
    }
    grpc = {
        "listen": args.grpc_listen,
        "tls_cert": args.grpc_tls_cert,
        "tls_key": args.grpc_tls_key,
        "tls_client_ca": args.grpc_tls_client_ca,
        "subscribe_listen": args.subscribe_listen,
    }
    ovs = {
        "db": args.ovsdb,
        "rundir": args.ovs_rundir,
        "bridge": args.bridge,
        "datapath_type": args.datapath_type,
        "openflow_timeout": args.openflow_timeout,
    }
    kafka = {
        "bootstrap_servers": args.kafka_bootstrap,
        "topic": args.kafka_topic,
        "reply_topic": args.kafka_reply_topic,
    }
    return replace(
        cfg,
        **{k: v for k, v in top.items() if v is not None},
        ovs=replace(cfg.ovs, **{k: v for k, v in ovs.items() if v is not None}),
        grpc=replace(cfg.grpc, **{k: v for k, v in grpc.items() if v is not None}),
        controller=replace(cfg.controller, **{k: v for k, v in controller.items() if v is not None}),
        kafka=replace(cfg.kafka, **{k: v for k, v in kafka.items() if v is not None}),
        dhcp=replace(cfg.dhcp, enabled=False) if args.no_dhcp else cfg.dhcp,
        routing=replace(
            cfg.routing,
            **({"mode": args.routing_mode} if args.routing_mode else {}),
            **({"fast_path": False} if args.no_route_fast_path else {}),
        ),
        metrics=replace(cfg.metrics, listen=args.metrics_listen) if args.metrics_listen else cfg.metrics,
    )
