"""A configuration that is half right stops `aca-agent` before it touches anything: exit code 2,
one line on stderr saying why, and the state directory not even locked. The check runs before
OVS, so these tests need no sandbox: the real entry point, real certificate files."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

from agent.sandbox.pki import AGENT, CONTROLLER, Pki, sandbox_pki
from tests.support.parts import missing

pytestmark = pytest.mark.integration
if shutil.which("openssl") is None:
    missing("openssl is not installed")

AGENT_BIN = str(pathlib.Path(sys.executable).with_name("aca-agent"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return sandbox_pki(tmp_path_factory.mktemp("pki"))


def _mtls(pki: Pki) -> list[str]:
    agent = pki.identity(AGENT)
    return [
        "--grpc-tls-cert",
        str(agent.cert),
        "--grpc-tls-key",
        str(agent.key),
        "--grpc-tls-client-ca",
        str(pki.ca),
    ]


def _cases(pki: Pki, d: pathlib.Path) -> dict[str, tuple[list[str], str, str]]:
    """name → (flags, config file text, what stderr must say)."""
    agent, controller = pki.identity(AGENT), pki.identity(CONTROLLER)
    not_pem = d / "not-a-ca.pem"
    not_pem.write_text("not a certificate\n")
    password = d / "kafka-password"
    password.write_text("secret\n")
    password.chmod(0o644)
    mtls = _mtls(pki)
    return {
        "default listener on TCP without TLS": (
            [],
            "",
            "[grpc] listen 0.0.0.0:50001 is reachable from other hosts without client certificates",
        ),
        "server certificate without client CA on TCP": (
            ["--grpc-tls-cert", str(agent.cert), "--grpc-tls-key", str(agent.key)],
            "",
            "set tls_client_ca",
        ),
        "client CA without certificate": (
            ["--grpc-tls-client-ca", str(pki.ca)],
            "",
            "tls_client_ca is set without tls_cert",
        ),
        "key without certificate": (
            ["--grpc-tls-key", str(agent.key)],
            "",
            "tls_key is set without tls_cert",
        ),
        "certificate without key": (
            ["--grpc-tls-cert", str(agent.cert)],
            "",
            "tls_cert is set without tls_key",
        ),
        "unreadable certificate": (
            [*mtls, "--grpc-tls-cert", str(d / "missing.crt")],
            "",
            "missing.crt cannot be read",
        ),
        "key not matching the certificate": (
            [*mtls, "--grpc-tls-key", str(controller.key)],
            "",
            "the key does not match the certificate",
        ),
        "client CA that is not PEM": (
            [*mtls, "--grpc-tls-client-ca", str(not_pem)],
            "",
            "holds no usable certificate",
        ),
        "empty host_id": ([*mtls, "--host-id", ""], "", "host_id is empty"),
        "empty underlay_ip": ([*mtls, "--underlay-ip", ""], "", "underlay_ip is empty"),
        "plaintext to a controller on another host": (
            [*mtls, "--controller", "192.0.2.1:9016"],
            "",
            "[controller] address 192.0.2.1:9016",
        ),
        "controller certificate without key": (
            [*mtls, "--controller", "192.0.2.1:9016", "--controller-cert", str(agent.cert)],
            "",
            "[controller] cert is set without key",
        ),
        "controller address in both places": (
            mtls,
            '[agent]\ncontroller = "127.0.0.1:1"\n[controller]\naddress = "127.0.0.1:2"\n',
            "set twice",
        ),
        "plaintext Kafka broker on another host": (
            mtls,
            '[kafka]\nbootstrap_servers = "192.0.2.1:9092"\n',
            "[kafka] bootstrap_servers 192.0.2.1",
        ),
        "Kafka password others can read": (
            mtls,
            f'[kafka]\nbootstrap_servers = "127.0.0.1:9092"\nsecurity_protocol = "SASL_PLAINTEXT"\n'
            f'sasl_mechanism = "PLAIN"\nsasl_username = "agent"\nsasl_password_file = "{password}"\n',
            "is accessible by group or others (mode 0644)",
        ),
    }


CASES = [
    "default listener on TCP without TLS",
    "server certificate without client CA on TCP",
    "client CA without certificate",
    "key without certificate",
    "certificate without key",
    "unreadable certificate",
    "key not matching the certificate",
    "client CA that is not PEM",
    "empty host_id",
    "empty underlay_ip",
    "plaintext to a controller on another host",
    "controller certificate without key",
    "controller address in both places",
    "plaintext Kafka broker on another host",
    "Kafka password others can read",
]


@pytest.mark.parametrize("case", CASES)
def test_half_right_config_exits_2_with_the_reason(pki: Pki, tmp_path: pathlib.Path, case: str) -> None:
    flags, config_text, reason = _cases(pki, tmp_path)[case]
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(config_text)
    proc = subprocess.run(
        [AGENT_BIN, "--config", str(config), "--host-id", "h1", "--underlay-ip", "192.0.2.10",
         "--state-dir", str(state), "--control-socket", str(tmp_path / "acactl.sock"),
         "--log-file", str(tmp_path / "agent.log"), *flags],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("aca-agent: bad configuration: ") and reason in line
    assert not state.exists()  # refused before the state directory, OVS or a socket


def test_every_case_is_run(pki: Pki, tmp_path: pathlib.Path) -> None:
    assert sorted(_cases(pki, tmp_path)) == sorted(CASES)
