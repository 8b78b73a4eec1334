"""The subscribe endpoint (SubscribeInfoProvisioner) is served with the goal-state endpoint's
credentials: under mutual TLS (the sandbox's default) a client needs a certificate signed by the
configured CA."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc
from agent.sandbox.hosts import Sandbox
from agent.sandbox.pki import AGENT, CONTROLLER, create_ca
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration
require_ovs()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[Sandbox, str]]:
    """A sandbox agent (mutual TLS, no Kafka) and its subscribe endpoint's address (a unix socket)."""
    with scratch_sandbox() as box:
        sock = box.root / "subscribe.sock"
        box.host_up("host1", agent_args=("--subscribe-listen", f"unix:{sock}"))
        yield box, f"unix:{sock}"


def _push(address: str, creds: grpc.ChannelCredentials, topic: str) -> int:
    options = [("grpc.ssl_target_name_override", AGENT)]
    with grpc.secure_channel(address, creds, options=options) as channel:
        stub = pb_grpc.SubscribeInfoProvisionerStub(channel)
        return stub.PushNodeSubscribeInfo(pb.NodeSubscribeInfo(topic=topic), timeout=10).operation_status


def test_a_client_certificate_is_answered(endpoint: tuple[Sandbox, str]) -> None:
    box, address = endpoint
    creds = box.pki.channel_credentials(CONTROLLER)
    assert _push(address, creds, "") == pb.INVALID_ARG
    assert _push(address, creds, "vpc-1") == pb.FAILURE  # no Kafka intake on this agent


def test_clients_without_the_cas_certificate_are_refused(
    endpoint: tuple[Sandbox, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    box, address = endpoint
    anonymous = grpc.ssl_channel_credentials(root_certificates=box.pki.ca.read_bytes())
    with pytest.raises(grpc.RpcError) as err:
        _push(address, anonymous, "vpc-1")
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN)
    impostor = create_ca(tmp_path_factory.mktemp("other-ca"), "another CA").issue(CONTROLLER)
    stranger = grpc.ssl_channel_credentials(
        root_certificates=box.pki.ca.read_bytes(),
        private_key=impostor.key.read_bytes(),
        certificate_chain=impostor.cert.read_bytes(),
    )
    with pytest.raises(grpc.RpcError):
        _push(address, stranger, "vpc-1")
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.SubscribeInfoProvisionerStub(channel).PushNodeSubscribeInfo(pb.NodeSubscribeInfo(), timeout=5)
