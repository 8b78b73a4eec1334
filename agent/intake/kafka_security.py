"""``[kafka]`` security keys → librdkafka settings, checked before the agent starts.

The broker's channel carries every goal state for this host, so it gets the same rule as the
gRPC intake: plaintext (PLAINTEXT, SASL_PLAINTEXT) only to a broker on this host's loopback, or
with ``allow_insecure = true``. The SASL password is read from a file only root may read; the
librdkafka passthrough (``[kafka.options]``) cannot set what these keys own, so nothing slips
past the check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.tls import ConfigError, check_ca, check_key_pair, is_local, read_secret

if TYPE_CHECKING:
    from agent.config import KafkaConfig

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# librdkafka key → the [kafka] key that sets it.
OWNED = {
    "security.protocol": "security_protocol",
    "ssl.ca.location": "ssl_ca",
    "ssl.certificate.location": "ssl_cert",
    "ssl.key.location": "ssl_key",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password_file",
}


def is_plaintext(kafka: KafkaConfig) -> bool:
    return not kafka.security_protocol.upper().endswith("SSL")


def insecure(kafka: KafkaConfig) -> bool:
    """Plaintext to a broker that is not on this host's loopback."""
    brokers = [b for b in kafka.bootstrap_servers.split(",") if b.strip()]
    return bool(brokers) and is_plaintext(kafka) and not all(is_local(b) for b in brokers)


def security_options(kafka: KafkaConfig) -> dict[str, str]:
    """The librdkafka settings for ``kafka``'s security keys (ConfigError if they are not
    complete, or plaintext goes to another host without ``allow_insecure``)."""
    protocol = kafka.security_protocol.upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"[kafka] security_protocol {kafka.security_protocol!r} is not one of {', '.join(PROTOCOLS)}"
        )
    taken = sorted(set(kafka.options) & set(OWNED))
    if taken:
        raise ConfigError(
            "[kafka.options] cannot set " + ", ".join(f"{k} (use [kafka] {OWNED[k]})" for k in taken)
        )
    options = {"security.protocol": protocol}
    tls, sasl = protocol.endswith("SSL"), protocol.startswith("SASL")
    if not tls and (kafka.ssl_ca or kafka.ssl_cert or kafka.ssl_key):
        raise ConfigError(
            f"[kafka] ssl_ca, ssl_cert and ssl_key need security_protocol SSL or SASL_SSL, not {protocol}"
        )
    if tls:
        if bool(kafka.ssl_cert) != bool(kafka.ssl_key):
            given, other = ("ssl_cert", "ssl_key") if kafka.ssl_cert else ("ssl_key", "ssl_cert")
            raise ConfigError(f"[kafka] {given} is set without {other}")
        if kafka.ssl_cert:
            check_key_pair(kafka.ssl_cert, kafka.ssl_key, "[kafka] ssl")
            options["ssl.certificate.location"] = kafka.ssl_cert
            options["ssl.key.location"] = kafka.ssl_key
        if kafka.ssl_ca:
            check_ca(kafka.ssl_ca, "[kafka] ssl_ca")
            options["ssl.ca.location"] = kafka.ssl_ca
    if sasl:
        if kafka.sasl_mechanism.upper() not in MECHANISMS:
            raise ConfigError(
                f"[kafka] sasl_mechanism must be one of {', '.join(MECHANISMS)} with {protocol}"
            )
        if not (kafka.sasl_username and kafka.sasl_password_file):
            raise ConfigError(f"[kafka] {protocol} needs sasl_username and sasl_password_file")
        options["sasl.mechanism"] = kafka.sasl_mechanism.upper()
        options["sasl.username"] = kafka.sasl_username
        options["sasl.password"] = read_secret(kafka.sasl_password_file, "[kafka] sasl_password_file")
    elif kafka.sasl_mechanism or kafka.sasl_username or kafka.sasl_password_file:
        raise ConfigError(
            f"[kafka] sasl_* keys need security_protocol SASL_SSL or SASL_PLAINTEXT, not {protocol}"
        )
    if insecure(kafka) and not kafka.allow_insecure:
        raise ConfigError(
            f"[kafka] bootstrap_servers {kafka.bootstrap_servers} is on another host and security_protocol "
            f"{protocol} is plaintext: use SSL or SASL_SSL, or set allow_insecure = true"
        )
    return options
