"""Agent configuration: a TOML file (every key optional) with command-line flags on top."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from agent.intake.grpc_server import GrpcSettings


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
    options: dict[str, str] = field(default_factory=dict)  # librdkafka passthrough (SASL/SSL ...)


@dataclass(frozen=True)
class DhcpConfig:
    enabled: bool = True  # answer DHCP for local ports (the C responder on an internal port)
    port: str = "aca-dhcp"  # the agent's internal OVS port the responder reads and writes
    mtu: int = 1450  # option 26: the overlay MTU
    lease_time: int = 86400
    domain: str = ""  # option 15 unless a subnet's extra options give one
    rate: int = 100  # requests per second per VM port (0: unlimited)
    burst: int = 200

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
    cache_idle_timeout: int = 10  # seconds, for the on_demand host-route flows
    queue: int = 256  # punted packets the C engine queues for the agent
    hold: int = 256  # packets the agent holds while it asks the controller
    hold_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.mode not in ("proactive", "on_demand"):
            raise ValueError(f"[routing] mode must be proactive or on_demand, not {self.mode!r}")


@dataclass(frozen=True)
class AgentConfig:
    host_id: str = ""
    underlay_ip: str = ""
    state_dir: str = "/var/lib/aca-agent"
    control_socket: str = "/run/aca-agent/acactl.sock"
    log_level: str = "INFO"
    log_file: str = ""  # empty: stderr (the journal under systemd)
    controller: str = ""  # host:port of the controller's GoalStateProvisioner (resync on start)
    config_path: str = ""
    ovs: OvsSettings = field(default_factory=OvsSettings)
    grpc: GrpcSettings = field(default_factory=GrpcSettings)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    dhcp: DhcpConfig = field(default_factory=DhcpConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)

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
    grpc_section = dict(data.get("grpc", {}))
    if "max_message_mb" in grpc_section:
        grpc_section["max_message_bytes"] = int(grpc_section.pop("max_message_mb")) * 1024 * 1024
    unknown = set(data) - {"agent", "ovs", "grpc", "kafka", "dhcp", "routing"}
    if unknown:
        raise ValueError(f"unknown section(s): {', '.join(sorted(unknown))}")
    nested = set(agent) & {"ovs", "grpc", "kafka", "dhcp", "routing", "config_path"}
    if nested:
        raise ValueError(f"[agent] cannot set {', '.join(sorted(nested))}")
    return replace(
        _section(AgentConfig, agent, "agent"),
        config_path=path,
        ovs=_section(OvsSettings, dict(data.get("ovs", {})), "ovs"),
        grpc=_section(GrpcSettings, grpc_section, "grpc"),
        kafka=_section(KafkaConfig, dict(data.get("kafka", {})), "kafka"),
        dhcp=_section(DhcpConfig, dict(data.get("dhcp", {})), "dhcp"),
        routing=_section(RoutingConfig, dict(data.get("routing", {})), "routing"),
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aca-agent", description="Alcor host agent")
    p.add_argument("--config", help="TOML config file (every key optional)")
    p.add_argument("--host-id")
    p.add_argument("--underlay-ip", help="this host's tunnel endpoint address")
    p.add_argument("--state-dir")
    p.add_argument("--control-socket", help="unix socket acactl talks to")
    p.add_argument("--log-level")
    p.add_argument("--log-file")
    p.add_argument("--controller", help="controller host:port for RequestGoalStates")
    p.add_argument("--grpc-listen", help="address:port or unix:PATH")
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
        "controller": args.controller,
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
        grpc=replace(
            cfg.grpc,
            **({"listen": args.grpc_listen} if args.grpc_listen else {}),
            **({"subscribe_listen": args.subscribe_listen} if args.subscribe_listen is not None else {}),
        ),
        kafka=replace(cfg.kafka, **{k: v for k, v in kafka.items() if v is not None}),
        dhcp=replace(cfg.dhcp, enabled=False) if args.no_dhcp else cfg.dhcp,
        routing=replace(
            cfg.routing,
            **({"mode": args.routing_mode} if args.routing_mode else {}),
            **({"fast_path": False} if args.no_route_fast_path else {}),
        ),
    )
