"""Mutual TLS on the agent's gRPC endpoint, and the RequestGoalStates(AGENT_RESTARTED) resync
the agent sends a configured controller when it starts."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from collections.abc import Iterator

import grpc
import pytest

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc
from agent.sandbox import goalstates as gs
from agent.sandbox.controller import TestController, serve
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import missing, require_ovs

pytestmark = pytest.mark.integration
require_ovs()
if shutil.which("openssl") is None:
    missing("openssl is not installed")

NAME = "aca-agent.test"


def _openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(d: pathlib.Path) -> None:
    """A CA, a server certificate for NAME and a client certificate, all signed by the CA."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    for who, ext in (("server", f"subjectAltName=DNS:{NAME}"), ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f"{who}.key",
                 "-out", f"{who}.csr", cwd=d)  # fmt: skip
        (d / f"{who}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{who}.ext", "-out", f"{who}.crt", cwd=d)  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, pathlib.Path, TestController]]:
    pki = tmp_path_factory.mktemp("pki")
    _make_pki(pki)
    controller = TestController()
    config = pki / "agent.toml"
    config.write_text(
        f'[grpc]\ntls_cert = "{pki / "server.crt"}"\ntls_key = "{pki / "server.key"}"\n'
        f'tls_client_ca = "{pki / "ca.crt"}"\n'
    )
    with serve(controller, str(pki / "controller.sock")) as address, scratch_sandbox() as box:
        box.host_up("host1", agent_args=("--config", str(config), "--controller", address))
        yield box, pki, controller


def _channel(box: Sandbox, pki: pathlib.Path, client_cert: bool) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(pki / "client.crt").read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(
        box.host("host1").grpc, creds, options=[("grpc.ssl_target_name_override", NAME)]
    )


def test_agent_asks_the_controller_for_a_resync_at_start(
    setup: tuple[Sandbox, pathlib.Path, TestController],
) -> None:
    _box, _pki, controller = setup
    wait_for(controller.seen.is_set, 20, "RequestGoalStates from the agent")
    (request,) = controller.requests[0].state_requests
    assert request.request_type == pb.AGENT_RESTARTED and request.request_id


def test_mutual_tls_accepts_a_client_certificate(setup: tuple[Sandbox, pathlib.Path, TestController]) -> None:
    box, pki, _controller = setup
    with _channel(box, pki, client_cert=True) as channel:
        stub = pb_grpc.GoalStateProvisionerStub(channel)
        reply = stub.PushNetworkResourceStates(gs.goal_state_v1(gs.vpc("vpc-tls", 77)), timeout=10)
    assert [s.operation_status for s in reply.operation_statuses] == [pb.SUCCESS]


@pytest.mark.parametrize("how", ["no client certificate", "plaintext"])
def test_clients_without_a_certificate_are_refused(
    setup: tuple[Sandbox, pathlib.Path, TestController], how: str
) -> None:
    box, pki, _controller = setup
    channel = (
        _channel(box, pki, client_cert=False)
        if how != "plaintext"
        else grpc.insecure_channel(box.host("host1").grpc)
    )
    with channel, pytest.raises(grpc.RpcError) as err:
        pb_grpc.GoalStateProvisionerStub(channel).PushNetworkResourceStates(gs.goal_state_v1(), timeout=5)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN)
