"""Start-up faults, with aca-agent as a process on a sandbox host and a real gRPC test controller.

A state database overwritten with garbage is moved aside and the agent starts empty, says so in
its log and `acactl status`, asks the controller for a resync and programs what it is sent next.
A second agent started on the same state directory refuses to run while the first keeps serving.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.model.store import DB_NAME
from agent.sandbox import goalstates as g
from agent.sandbox.controller import TestController, serve
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox, status_by_id
from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration

require_ovs()

HOST = "host1"
VPC, VNI, SUBNET, CIDR = "vpc-sf", 300, "sn-sf", "10.3.0.0/24"
REMOTE_HOST = "172.31.0.99"  # another compute host's tunnel endpoint (never contacted)


@pytest.fixture
def setup() -> Iterator[tuple[Sandbox, TestController]]:
    """One host whose agent has a test controller configured (RequestGoalStates at start)."""
    controller = TestController()
    with scratch_sandbox() as box, serve(controller, str(box.root / "controller.sock"), box.pki) as address:
        box.host_up(HOST, agent_args=("--controller", address))
        yield box, controller


def _push_neighbour(box: Sandbox, nid: str, last_octet: int) -> dict[str, str]:
    message = g.goal_state_v2(
        g.vpc(VPC, VNI),
        g.subnet(SUBNET, VPC, CIDR, VNI, gateway_ip="10.3.0.1"),
        g.neighbor(nid, VPC, SUBNET, f"10.3.0.{last_octet}", _mac(last_octet), REMOTE_HOST),
    )
    (reply,) = box.push_message(HOST, message)
    return status_by_id(reply)


def _mac(last_octet: int) -> str:
    return f"02:00:00:03:00:{last_octet:02x}"


def _forwarding_flows(box: Sandbox, last_octet: int) -> list[str]:
    """br-int's flows (as OVS holds them) that send to the neighbour's MAC through the tunnel."""
    dump = box.exec(HOST, ["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "br-int"]).stdout
    return [
        line for line in dump.splitlines() if f"dl_dst={_mac(last_octet)}" in line and REMOTE_HOST in line
    ]


def _resync_requests(controller: TestController) -> int:
    return len(controller.state_requests(pb.AGENT_RESTARTED))


def test_corrupt_state_database_is_quarantined_and_the_agent_starts_empty(
    setup: tuple[Sandbox, TestController],
) -> None:
    box, controller = setup
    wait_for(lambda: _resync_requests(controller) == 1, 20, "the first start's RequestGoalStates")
    assert _push_neighbour(box, "nb-before", 11)["nb-before"] == "SUCCESS"
    host = box.host(HOST)
    box.stop_agent(HOST)  # a clean stop folds the WAL into the file: the garbage replaces it all
    garbage = b"not a database: overwritten behind the agent's back\n" * 200
    (pathlib.Path(host.state_dir) / DB_NAME).write_bytes(garbage)

    box.restart_agent(HOST)  # returns once its gRPC and control sockets are up: it started
    # Started empty, yet the switch keeps forwarding for the lost state until the controller's
    # resync refills it (swept after a grace period).
    wait_for(lambda: box.control(HOST, "status")["dataplane_ready"], 20, "the start-up resync")
    assert len(_forwarding_flows(box, 11)) == 1

    status = box.control(HOST, "status")
    recovery = status["state_recovery"]
    kept = pathlib.Path(recovery["quarantined"])
    assert kept.parent == pathlib.Path(host.state_dir)
    assert kept.name.startswith(f"{DB_NAME}.quarantined-")
    assert kept.read_bytes() == garbage  # kept as it was, for inspection
    assert "SQLITE_NOTADB" in recovery["reason"]
    assert status["resources"]["neighbor"] == 0
    log = pathlib.Path(host.log_file).read_text()
    assert any(
        "level=ERROR" in line and f"event=state_quarantined path={kept} reason=" in line
        for line in log.splitlines()
    )
    wait_for(lambda: _resync_requests(controller) == 2, 20, "RequestGoalStates(AGENT_RESTARTED) after it")

    assert _push_neighbour(box, "nb-after", 12)["nb-after"] == "SUCCESS"
    assert len(_forwarding_flows(box, 12)) == 1


def test_second_agent_on_the_same_state_directory_refuses_to_run(
    setup: tuple[Sandbox, TestController],
) -> None:
    box, _controller = setup
    host = box.host(HOST)
    other = box.root / "second"
    other.mkdir()
    second = subprocess.run(
        [
            "ip", "netns", "exec", host.netns, str(pathlib.Path(sys.executable).with_name("aca-agent")),
            "--host-id", HOST,
            "--underlay-ip", host.underlay_ip,
            "--grpc-listen", f"unix:{other / 'grpc.sock'}",
            "--ovsdb", host.db_remote,
            "--ovs-rundir", host.ovs_rundir,
            "--datapath-type", "netdev",
            "--state-dir", host.state_dir,
            "--control-socket", str(other / "acactl.sock"),
            "--log-file", str(other / "agent.log"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert second.returncode != 0
    assert (
        f"state directory {host.state_dir} is in use by another aca-agent (pid {host.agent_pid}); "
        "refusing to start"
    ) in second.stderr
    assert not (other / "grpc.sock").exists()

    # The first agent never noticed: it answers, programs, and still holds its state.
    assert box.control(HOST, "status")["state_recovery"]["quarantined"] == ""
    assert _push_neighbour(box, "nb-first", 21)["nb-first"] == "SUCCESS"
    assert len(_forwarding_flows(box, 21)) == 1
    assert box.host(HOST).agent_pid == host.agent_pid
