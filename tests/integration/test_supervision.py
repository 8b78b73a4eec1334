"""Supervised threads under real faults: the agent as a process in a sandbox host whose OpenFlow
connection goes through a relay of the test's (which can send garbage), consuming Kafka from a
tansu broker in the host's namespace; plus the Kafka loop's restart and a C I/O thread's end,
in-process against the real broker and a real packet socket.

Every test leaves the agent healthy (``ready``, every thread running), so they pass alone and
in any order.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.dhcp.engine import Engine
from agent.intake.kafka_consumer import DecodedGoalState, KafkaIntake, KafkaSettings
from agent.sandbox import goalstates as g
from agent.sandbox.hosts import HostInfo, Sandbox
from agent.sandbox.kafka import FAST_GROUP_OPTIONS, KafkaBroker, enter_netns, running_broker
from agent.sandbox.ovs import process_gone
from agent.sandbox.poll import wait_for
from agent.supervision import Supervisor, io_thread_liveness
from tests.support.agent_host import scratch_sandbox, status_by_id
from tests.support.kafka_agent import group_committed
from tests.support.openflow_peer import OpenFlowPeer, short_error
from tests.support.parts import require_ovs, require_tansu

pytestmark = pytest.mark.integration

require_ovs()
require_tansu()

HOST = "host1"
TOPIC = f"host-{HOST}"
VPC, VNI, SUBNET, CIDR = "vpc-1", 100, "sn-1", "10.0.0.0/24"
REMOTE_HOST = "172.31.0.99"  # another compute host's tunnel endpoint (never contacted)
AGENT_THREADS = {"control", "core", "dhcp-io", "kafka", "openflow", "ovsdb", "route-io", "route-punts"}


@dataclass
class AgentHost:
    sandbox: Sandbox
    host: HostInfo
    broker: KafkaBroker
    relay: OpenFlowPeer

    def status(self) -> dict[str, Any]:
        return self.sandbox.control(HOST, "status")

    def log(self) -> str:
        return pathlib.Path(self.host.log_file).read_text(errors="replace")

    def agent_flows(self) -> list[str]:
        """br-int's flows with the agent's cookie tag, read from OVS (counters and ages left out)."""
        out = self.sandbox.ovs(HOST).ofctl("--no-stats", "dump-flows", "br-int")
        return sorted(line.strip() for line in out.splitlines() if "cookie=0xa" in line)

    def healthy(self) -> bool:
        status = self.status()
        return (
            status["ready"]
            and set(status["threads"]) == AGENT_THREADS
            and all(state == "running" for state in status["threads"].values())
        )

    def push(self, *resources: Any) -> dict[str, str]:
        msg = g.goal_state_v2(
            g.vpc(VPC, VNI), g.subnet(SUBNET, VPC, CIDR, VNI), *resources, host_ip=self.host.underlay_ip
        )
        (reply,) = self.sandbox.push_message(HOST, msg)
        return status_by_id(reply)


def neighbour(nid: str, last_octet: int) -> pb.NeighborState:
    return g.neighbor(
        nid, VPC, SUBNET, f"10.0.0.{last_octet}", f"02:00:00:00:00:{last_octet:02x}", REMOTE_HOST
    )


@pytest.fixture(scope="module")
def agent_host() -> Iterator[AgentHost]:
    with contextlib.ExitStack() as stack:
        sandbox = stack.enter_context(scratch_sandbox())
        host = sandbox.host_up(HOST, agent=False)
        broker = stack.enter_context(running_broker(netns=host.netns))
        broker.create_topic(TOPIC)
        # The agent's OpenFlow socket is the relay's; the relay reaches ovs-vswitchd's own.
        relay_dir = pathlib.Path(host.dir) / "relay"
        relay_dir.mkdir()
        relay = OpenFlowPeer(str(relay_dir / "br-int.mgmt"), upstream=f"{host.ovs_rundir}/br-int.mgmt")
        stack.callback(relay.close)
        stack.callback(sandbox.stop_agent, HOST)  # unwound first: the agent leaves while all is up
        options = "\n".join(f'"{key}" = "{value}"' for key, value in FAST_GROUP_OPTIONS.items())
        config = pathlib.Path(host.dir) / "agent.toml"
        config.write_text(
            f'[kafka]\nbootstrap_servers = "{broker.bootstrap}"\n\n[kafka.options]\n{options}\n'
        )
        host = sandbox.restart_agent(
            HOST,
            agent_args=["--ovs-rundir", str(relay_dir), "--config", str(config)],
        )
        agent = AgentHost(sandbox, host, broker, relay)
        wait_for(agent.healthy, what="the agent ready with every thread running")
        yield agent


def test_status_shows_ready_and_every_thread(agent_host: AgentHost) -> None:
    status = agent_host.status()
    assert status["ready"] is True
    assert status["threads"] == dict.fromkeys(sorted(AGENT_THREADS), "running")
    assert status["thread_errors"] == {}


def test_garbage_from_the_switch_reconnects_and_replays(agent_host: AgentHost) -> None:
    assert agent_host.push(neighbour("nb-of", 21)) == {VPC: "SUCCESS", "nb-of": "SUCCESS"}
    flows = agent_host.agent_flows()
    assert any("10.0.0.21" in flow for flow in flows)
    connections, replays = agent_host.relay.connections, agent_host.log().count("event=openflow_reconnected")
    agent_host.relay.inject(short_error())
    wait_for(lambda: "event=openflow_malformed" in agent_host.log(), what="the malformed-message line")
    wait_for(
        lambda: agent_host.log().count("event=openflow_reconnected") > replays,
        what="the replay after the reconnect",
    )
    assert agent_host.relay.connections == connections + 1
    wait_for(agent_host.healthy, what="ready again, every thread running")
    assert process_gone(agent_host.host.agent_pid or 0) is False
    assert agent_host.agent_flows() == flows
    # The new connection programs what comes next.
    assert agent_host.push(neighbour("nb-of-after", 22)) == {VPC: "SUCCESS", "nb-of-after": "SUCCESS"}
    assert any("10.0.0.22" in flow for flow in agent_host.agent_flows())


def test_ovsdb_server_restart_is_ridden_out(agent_host: AgentHost) -> None:
    port_id, mac = "port-db", "02:00:00:00:01:31"
    port = g.port(port_id, VPC, SUBNET, "10.0.0.31", mac, host_ip=agent_host.host.underlay_ip)
    assert agent_host.push(port)[port_id] == "PENDING"
    agent_host.sandbox.ovs(HOST).restart_ovsdb()
    # Plugged after the restart: only a reconnected, re-monitoring IDL loop can see it.
    agent_host.sandbox.ovs(HOST).vsctl(
        "add-port", "br-int", "tap-db", "--", "set", "Interface", "tap-db", "type=internal",
        f"external_ids:iface-id={port_id}", f"external_ids:attached-mac={mac}",
    )  # fmt: skip
    wait_for(
        lambda: (
            {p["id"]: p["state"] for p in agent_host.sandbox.control(HOST, "ports")}.get(port_id)
            == "programmed"
        ),
        what="the port plugged after the restart to be programmed",
    )
    assert agent_host.status()["threads"]["ovsdb"] == "running"
    wait_for(agent_host.healthy, what="ready, every thread running")


def test_broker_outage_keeps_the_intake_running_and_it_consumes_again(agent_host: AgentHost) -> None:
    errors = agent_host.log().count("event=kafka_error ")
    agent_host.broker.stop()
    try:
        wait_for(
            lambda: agent_host.log().count("event=kafka_error ") > errors, what="the outage to be noticed"
        )
        status = agent_host.status()
        assert status["threads"]["kafka"] == "running"  # librdkafka reconnects; the loop goes on
        assert status["ready"] is True
    finally:
        agent_host.broker.start()  # same port, empty storage
        agent_host.broker.create_topic(TOPIC)
    msg = g.goal_state_v2(
        g.vpc(VPC, VNI),
        g.subnet(SUBNET, VPC, CIDR, VNI),
        neighbour("nb-kafka", 41),
        host_ip=agent_host.host.underlay_ip,
    )
    agent_host.broker.produce(TOPIC, msg.SerializeToString())
    wait_for(
        lambda: "nb-kafka" in {n["id"] for n in agent_host.sandbox.control(HOST, "neighbours")},
        timeout=30,
        what="the goal state produced after the broker came back",
    )
    assert agent_host.status()["threads"]["kafka"] == "running"


# ---------------------------------------------------------------- in-process: Kafka's restart


def test_kafka_loop_that_crashes_is_restarted_and_the_message_comes_again() -> None:
    """The loop raises after applying, before committing (a failing metrics callback): the
    supervisor restarts it with new clients, the uncommitted message is delivered again, applied
    again (a no-op for the core) and committed."""
    applied: list[DecodedGoalState] = []
    failures: list[str] = []

    def apply(goal_state: DecodedGoalState) -> pb.GoalStateOperationReply:
        applied.append(goal_state)
        return pb.GoalStateOperationReply()

    def metrics(name: str) -> None:
        if name == "applied" and not failures:
            failures.append(name)
            raise RuntimeError("metrics sink broke")

    with running_broker() as broker:
        suffix = uuid.uuid4().hex[:8]
        settings = KafkaSettings(
            bootstrap_servers=broker.bootstrap,
            topic=f"host-{suffix}",
            group_id=f"aca-{suffix}",
            extra=FAST_GROUP_OPTIONS,
            poll_timeout_s=0.1,
        )
        broker.create_topic(settings.topic)
        sent = g.goal_state_v2(neighbour("nb-restart", 51), host_ip="172.31.0.11")
        broker.produce(settings.topic, sent.SerializeToString())
        supervisor = Supervisor(backoff_min=0.1)
        intake = KafkaIntake(settings, apply, metrics=metrics)
        intake.start(supervisor)
        try:
            wait_for(lambda: group_committed(settings) == 1, timeout=30, what="the commit after the restart")
            assert applied == [sent, sent]
            assert supervisor.check()
            assert supervisor.states() == {"kafka": "running"}
            assert supervisor.errors() == {"kafka": "RuntimeError('metrics sink broke')"}
            assert supervisor.fatal is None
        finally:
            supervisor.stop()
            assert intake.stop(10)
        assert supervisor.states() == {"kafka": "stopped"}


# ---------------------------------------------------------------- in-process: a C I/O thread's end
@pytest.fixture
def netns_worker() -> Iterator[ThreadPoolExecutor]:
    """A thread inside a fresh network namespace (its lo up): C threads it starts live there too."""
    name = f"acasup-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        with ThreadPoolExecutor(1, "acasup-netns", initializer=enter_netns, initargs=(name,)) as worker:
            yield worker
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _sockets() -> set[int]:
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                found.add(int(fd))
    return found


def _dhcp_probe() -> None:
    """A datagram to port 67 on lo: the responder's socket filter lets it through."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x01" * 300, ("127.0.0.1", 67))


def test_c_io_thread_that_ends_by_itself_is_reported_with_its_error(netns_worker: ThreadPoolExecutor) -> None:
    engine = Engine()
    before = _sockets()
    netns_worker.submit(engine.start_io, "lo").result()
    try:
        (packet_socket,) = _sockets() - before
        probe = io_thread_liveness(engine.io_status)
        assert probe() is True
        code, loops = engine.io_status()
        assert code == 1
        netns_worker.submit(_dhcp_probe).result()
        wait_for(lambda: engine.io_status()[1] > loops, what="the I/O thread to wake for a frame")
        # The socket becomes unusable under the thread (what a closed or clobbered descriptor does).
        with open(os.devnull, "rb") as devnull:
            os.dup2(devnull.fileno(), packet_socket)
        netns_worker.submit(_dhcp_probe).result()  # wakes the poll still holding the old socket
        wait_for(lambda: engine.io_status()[0] < 0, what="the thread to end by itself")
        assert engine.io_status()[0] == -errno.ENOTSOCK
        assert probe() == f"I/O thread ended: {os.strerror(errno.ENOTSOCK)}"
        stopped = threading.Event()
        supervisor = Supervisor(on_fatal=stopped.set)
        supervisor.watch("dhcp-io", probe)
        assert not supervisor.check()
        assert stopped.is_set() and supervisor.states() == {"dhcp-io": "dead"}
    finally:
        engine.stop_io()
    assert engine.io_status()[0] == 0  # stopped: the error went with the thread
    engine.close()
