"""The configuration checks aca-agent runs before it touches the state directory, OVS or a
socket: a config that is half right (an intake without the host's identity, a half-configured
TLS, an unauthenticated channel to or from another host) stops the start with exit code 2 and
a one-line reason, which the unit's RestartPreventExitStatus=2 does not retry."""

from __future__ import annotations

import ipaddress

from agent.config import AgentConfig
from agent.intake import kafka_security
from agent.tls import ConfigError


def check(cfg: AgentConfig) -> list[str]:
    """ConfigError for what must not start; else the insecure channels ``allow_insecure`` let
    through, one ``event=...`` log line each (logged as WARNING at every start)."""
    if cfg.grpc.listen or cfg.kafka.bootstrap_servers:
        if not cfg.host_id.strip():
            raise ConfigError(
                "host_id is empty: set [agent] host_id (--host-id); it names this host's Kafka topic"
            )
        try:
            ipaddress.IPv4Address(cfg.underlay_ip)
        except ValueError:
            what = "empty" if not cfg.underlay_ip else f"{cfg.underlay_ip!r}, not an IPv4 address"
            raise ConfigError(
                f"underlay_ip is {what}: set [agent] underlay_ip (--underlay-ip), this host's tunnel endpoint"
            ) from None
    cfg.grpc.check()
    cfg.controller.check()
    if cfg.kafka.bootstrap_servers:
        kafka_security.security_options(cfg.kafka)
    insecure = {
        "grpc": cfg.grpc.listen if cfg.grpc.insecure else "",
        "controller": cfg.controller.address if cfg.controller.insecure else "",
        "kafka": cfg.kafka.bootstrap_servers if kafka_security.insecure(cfg.kafka) else "",
    }
    return [
        f"event=insecure_channel channel={channel} address={address} reason=allow_insecure"
        for channel, address in insecure.items()
        if address
    ]
