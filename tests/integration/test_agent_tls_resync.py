"""Mutual TLS on the agent's gRPC endpoint (a sandbox's default, over its unix socket and over
TCP on the host's underlay address), pinned client identities, the explicit plaintext opt-out,
and the RequestGoalStates(AGENT_RESTARTED) resync the agent sends a controller that requires
mutual TLS, and not to one whose certificate the agent's CA did not sign. (On-demand routing asks
a controller over the same channel settings: tests/integration/test_route_on_demand.py.)"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator

import grpc
import pytest

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc
from agent.sandbox import goalstates as gs
from agent.sandbox.controller import TestController, serve
from agent.sandbox.hosts import Sandbox
from agent.sandbox.pki import AGENT, CONTROLLER, Pki, create_ca
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import missing, require_ovs

pytestmark = pytest.mark.integration
require_ovs()
if shutil.which("openssl") is None:
    missing("openssl is not installed")

HOST = "host1"
ROOT = pathlib.Path(__file__).parents[2]
REFUSED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN)


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Sandbox, TestController, str]]:
    controller = TestController()
    with scratch_sandbox() as box, serve(controller, str(box.root / "controller.sock"), box.pki) as address:
        box.host_up(HOST, agent_args=("--controller", address))
        yield box, controller, address


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA that issued a certificate with the very name the sandbox's clients have."""
    pki = create_ca(tmp_path_factory.mktemp("other-ca"), "another CA")
    pki.issue(CONTROLLER)
    return pki


@pytest.fixture
def restarted(setup: tuple[Sandbox, TestController, str]) -> Iterator[Callable]:
    """``restart(*flags)``: the agent restarted with extra flags; back to the default after the test."""
    box, _controller, address = setup

    def restart(*flags: str) -> None:
        box.restart_agent(HOST, agent_args=("--controller", address, *flags))

    yield restart
    restart()


def _push(channel: grpc.Channel) -> pb.GoalStateOperationReply:
    stub = pb_grpc.GoalStateProvisionerStub(channel)
    return stub.PushNetworkResourceStates(gs.goal_state_v1(gs.vpc("vpc-tls", 77)), timeout=10)


def _probe(box: Sandbox, target: str, *flags: str) -> str:
    """A client inside the host's namespace calls ``target``; the status code name it got."""
    host = box.host(HOST)
    proc = subprocess.run(
        ["ip", "netns", "exec", host.netns, sys.executable, "-m", "tests.support.grpc_probe", target, *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return proc.stdout.strip()


def test_agent_asks_the_controller_for_a_resync_at_start(
    setup: tuple[Sandbox, TestController, str],
) -> None:
    _box, controller, _address = setup
    wait_for(controller.seen.is_set, 20, "RequestGoalStates from the agent over mutual TLS")
    (request,) = controller.requests[0].state_requests
    assert request.request_type == pb.AGENT_RESTARTED and request.request_id


def test_mutual_tls_accepts_a_client_certificate(setup: tuple[Sandbox, TestController, str]) -> None:
    box, _controller, _address = setup
    with box.channel(HOST) as channel:
        reply = _push(channel)
    assert [s.operation_status for s in reply.operation_statuses] == [pb.SUCCESS]
    assert box.control(HOST, "status")["grpc_insecure"] is False


@pytest.mark.parametrize("how", ["no client certificate", "another CA's certificate", "plaintext"])
def test_clients_the_agent_cannot_authenticate_are_refused(
    setup: tuple[Sandbox, TestController, str], other_ca: Pki, how: str
) -> None:
    box, _controller, _address = setup
    target = box.host(HOST).grpc
    options = [("grpc.ssl_target_name_override", AGENT)]
    ca = box.pki.ca.read_bytes()
    if how == "plaintext":
        channel = grpc.insecure_channel(target)
    else:
        client = other_ca.identity(CONTROLLER)
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=client.key.read_bytes() if how != "no client certificate" else None,
            certificate_chain=client.cert.read_bytes() if how != "no client certificate" else None,
        )
        channel = grpc.secure_channel(target, creds, options=options)
    with channel, pytest.raises(grpc.RpcError) as err:
        _push(channel)
    assert err.value.code() in REFUSED


def test_mutual_tls_over_tcp_on_the_underlay_address(
    setup: tuple[Sandbox, TestController, str], other_ca: Pki, restarted: Callable
) -> None:
    box, _controller, _address = setup
    target = f"{box.host(HOST).underlay_ip}:50001"
    restarted("--grpc-listen", target)
    pki, client = box.pki, box.pki.identity(CONTROLLER)
    stranger = other_ca.identity(CONTROLLER)
    name = ("--server-name", AGENT)
    assert _probe(box, target) == "UNAVAILABLE"  # plaintext
    assert _probe(box, target, "--ca", str(pki.ca), *name) == "UNAVAILABLE"  # no client certificate
    assert _probe(box, target, "--ca", str(pki.ca), "--cert", str(stranger.cert), "--key", str(stranger.key),
                  *name) == "UNAVAILABLE"  # fmt: skip
    assert _probe(box, target, "--ca", str(pki.ca), "--cert", str(client.cert), "--key", str(client.key),
                  *name) == "OK"  # fmt: skip
    assert box.control(HOST, "status")["grpc_insecure"] is False


def test_pinned_client_identities(setup: tuple[Sandbox, TestController, str], restarted: Callable) -> None:
    box, _controller, _address = setup
    box.pki.issue("intruder.sandbox")  # same CA, another name
    config = box.root / "pinned.toml"
    config.write_text(f'[grpc]\nallowed_clients = ["{CONTROLLER}"]\n')
    restarted("--config", str(config))
    with box.channel(HOST, identity="intruder.sandbox") as channel, pytest.raises(grpc.RpcError) as err:
        _push(channel)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with box.channel(HOST) as channel:
        assert [s.operation_status for s in _push(channel).operation_statuses] == [pb.SUCCESS]


def test_plaintext_on_tcp_only_when_allowed_and_then_shown(
    setup: tuple[Sandbox, TestController, str], restarted: Callable
) -> None:
    box, _controller, _address = setup
    host = box.host(HOST)
    target = f"{host.underlay_ip}:50001"
    config = box.root / "insecure.toml"
    config.write_text("[grpc]\nallow_insecure = true\n")
    no_tls = ("--grpc-tls-cert=", "--grpc-tls-key=", "--grpc-tls-client-ca=")
    restarted("--grpc-listen", target, *no_tls, "--config", str(config))
    assert _probe(box, target) == "OK"
    assert box.control(HOST, "status")["grpc_insecure"] is True
    log = pathlib.Path(host.log_file).read_text()
    assert f"level=WARNING logger=aca.agent event=insecure_channel channel=grpc address={target}" in log


def test_a_controller_the_agent_cannot_authenticate_gets_no_request(
    setup: tuple[Sandbox, TestController, str], other_ca: Pki, restarted: Callable
) -> None:
    box, _controller, _address = setup
    impostor = TestController()
    with serve(impostor, str(box.root / "impostor.sock"), other_ca) as address:
        restarted("--controller", address)
        log = pathlib.Path(box.host(HOST).log_file)
        wait_for(
            lambda: (
                f"event=resync_request_failed controller={address} attempt=1 code=StatusCode.UNAVAILABLE"
                in log.read_text()
            ),
            20,
            "the agent's resync refused by its own TLS check",
        )
        assert impostor.requests == []
