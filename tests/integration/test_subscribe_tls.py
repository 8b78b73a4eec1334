"""The subscribe endpoint (SubscribeInfoProvisioner) is served with the goal-state endpoint's
credentials: under mutual TLS a client needs a certificate signed by the configured CA."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import grpc
import pytest

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc
from tests.integration.test_agent_tls_resync import NAME, _make_pki
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration
require_ovs()


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, pathlib.Path]]:
    """The subscribe endpoint's address (a unix socket) of an agent under mutual TLS, no Kafka."""
    pki = tmp_path_factory.mktemp("pki")
    _make_pki(pki)
    config = pki / "agent.toml"
    config.write_text(
        f'[grpc]\ntls_cert = "{pki / "server.crt"}"\ntls_key = "{pki / "server.key"}"\n'
        f'tls_client_ca = "{pki / "ca.crt"}"\n'
    )
    with scratch_sandbox() as box:
        sock = box.root / "subscribe.sock"
        box.host_up("host1", agent_args=("--config", str(config), "--subscribe-listen", f"unix:{sock}"))
        yield f"unix:{sock}", pki


def _push(address: str, pki: pathlib.Path, client_cert: bool, topic: str) -> int:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=(pki / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(pki / "client.crt").read_bytes() if client_cert else None,
    )
    options = [("grpc.ssl_target_name_override", NAME)]
    with grpc.secure_channel(address, creds, options=options) as channel:
        stub = pb_grpc.SubscribeInfoProvisionerStub(channel)
        return stub.PushNodeSubscribeInfo(pb.NodeSubscribeInfo(topic=topic), timeout=10).operation_status


def test_a_client_certificate_is_answered(endpoint: tuple[str, pathlib.Path]) -> None:
    address, pki = endpoint
    assert _push(address, pki, True, "") == pb.INVALID_ARG
    assert _push(address, pki, True, "vpc-1") == pb.FAILURE  # no Kafka intake on this agent


def test_clients_without_a_certificate_are_refused(endpoint: tuple[str, pathlib.Path]) -> None:
    address, pki = endpoint
    with pytest.raises(grpc.RpcError) as err:
        _push(address, pki, False, "vpc-1")
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN)
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.SubscribeInfoProvisionerStub(channel).PushNodeSubscribeInfo(pb.NodeSubscribeInfo(), timeout=5)
