"""[kafka] security keys → librdkafka settings, and the refusals. The test broker (tansu) speaks
no TLS or SASL, so the mapping is checked here rather than against a broker."""

from __future__ import annotations

import pathlib
import shutil
from dataclasses import replace

import pytest

from agent.config import KafkaConfig
from agent.intake.kafka_security import insecure, security_options
from agent.sandbox.pki import AGENT, Pki, sandbox_pki
from agent.tls import ConfigError

LOCAL = KafkaConfig(bootstrap_servers="127.0.0.1:9092")
REMOTE = KafkaConfig(bootstrap_servers="kafka1.example:9093,kafka2.example:9093")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return sandbox_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def password(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "password"
    path.write_text("s3cret\n")
    path.chmod(0o600)
    return path


def test_plaintext_to_loopback_is_allowed() -> None:
    assert security_options(LOCAL) == {"security.protocol": "PLAINTEXT"}
    assert not insecure(LOCAL)
    assert not insecure(KafkaConfig())  # Kafka off


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_plaintext_to_another_host_needs_allow_insecure(protocol: str, password: pathlib.Path) -> None:
    sasl = {"sasl_mechanism": "PLAIN", "sasl_username": "a", "sasl_password_file": str(password)}
    cfg = replace(REMOTE, security_protocol=protocol, **(sasl if protocol.startswith("SASL") else {}))
    with pytest.raises(ConfigError, match="is on another host"):
        security_options(cfg)
    allowed = replace(cfg, allow_insecure=True)
    assert security_options(allowed)["security.protocol"] == protocol
    assert insecure(allowed)


def test_one_remote_broker_among_local_ones_counts() -> None:
    with pytest.raises(ConfigError):
        security_options(KafkaConfig(bootstrap_servers="127.0.0.1:9092,192.0.2.1:9092"))


def test_ssl_with_client_certificate(pki: Pki) -> None:
    agent = pki.identity(AGENT)
    cfg = replace(
        REMOTE, security_protocol="ssl", ssl_ca=str(pki.ca), ssl_cert=str(agent.cert), ssl_key=str(agent.key)
    )
    assert security_options(cfg) == {
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki.ca),
        "ssl.certificate.location": str(agent.cert),
        "ssl.key.location": str(agent.key),
    }
    assert not insecure(cfg)


def test_sasl_ssl_reads_the_password_file(pki: Pki, password: pathlib.Path) -> None:
    cfg = replace(
        REMOTE,
        security_protocol="SASL_SSL",
        ssl_ca=str(pki.ca),
        sasl_mechanism="scram-sha-512",
        sasl_username="agent-h1",
        sasl_password_file=str(password),
    )
    assert security_options(cfg) == {
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(pki.ca),
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "agent-h1",
        "sasl.password": "s3cret",
    }


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660])
def test_a_password_file_others_may_read_is_refused(password: pathlib.Path, mode: int) -> None:
    password.chmod(mode)
    cfg = replace(
        REMOTE,
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="a",
        sasl_password_file=str(password),
    )
    with pytest.raises(ConfigError, match="accessible by group or others"):
        security_options(cfg)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"security_protocol": "TLS"}, "is not one of"),
        ({"security_protocol": "SSL", "ssl_cert": "/x.crt"}, "ssl_cert is set without ssl_key"),
        ({"security_protocol": "SSL", "ssl_key": "/x.key"}, "ssl_key is set without ssl_cert"),
        ({"security_protocol": "SSL", "ssl_ca": "/nonexistent/ca.crt"}, "cannot be read"),
        ({"ssl_ca": "/ca.crt", "allow_insecure": True}, "need security_protocol SSL"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism must be"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}, "needs sasl_username"),
        ({"sasl_username": "a", "allow_insecure": True}, "sasl_\\* keys need"),
        (
            {"security_protocol": "SSL", "options": {"sasl.password": "x"}},
            "use \\[kafka\\] sasl_password_file",
        ),
        ({"security_protocol": "SSL", "options": {"security.protocol": "PLAINTEXT"}}, "cannot set"),
    ],
)
def test_incomplete_or_bypassing_settings_are_refused(change: dict, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        security_options(replace(REMOTE, **change))


def test_other_librdkafka_options_pass_through() -> None:
    cfg = replace(
        LOCAL, options={"fetch.wait.max.ms": "20", "ssl.endpoint.identification.algorithm": "https"}
    )
    assert security_options(cfg) == {"security.protocol": "PLAINTEXT"}
