"""A full disk under the state directory: nothing half-accepted, and the resend is programmed.

The agent's state directory sits on a 256 KiB tmpfs, so journaling a 3,000-neighbour goal state
fails. Over gRPC every resource must answer FAILURE and nothing of it may stay held (else the
controller's resend would look "unchanged" and get a hollow SUCCESS); once the tmpfs grows, the
same goal state is programmed, its flows read back from OVS. Over Kafka the message must stay
uncommitted during the window and be applied, then committed, once space returns.
"""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.planner.cookies import Kind, cookie
from agent.sandbox import goalstates as g
from agent.sandbox.hosts import HostInfo, Sandbox
from agent.sandbox.kafka import running_broker
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox
from tests.support.kafka_agent import agent_config, committed_offset
from tests.support.parts import require_ovs, require_tansu
from tests.support.traffic import dump_cookies

pytestmark = pytest.mark.integration

require_ovs()

HOST = "df1"
TOPIC, GROUP = f"host-{HOST}", f"aca-agent-{HOST}"
REPLIES = f"{TOPIC}-replies"
NEIGHBOURS = 3000


@contextlib.contextmanager
def small_disk_host(agent_args: list[str] | None = None) -> Iterator[tuple[Sandbox, HostInfo]]:
    with scratch_sandbox() as sb:
        host = sb.host_up(HOST, agent=False)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", host.state_dir], check=True)
        try:
            yield sb, host
        finally:
            sb.stop_agent(HOST)
            subprocess.run(["umount", "-l", host.state_dir], check=False)


def _grow_disk(host: HostInfo) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", host.state_dir], check=True)


def _base(host: HostInfo) -> pb.GoalStateV2:
    return g.goal_state_v2(
        g.vpc("vpc-df", 300),
        g.subnet("sn-df", "vpc-df", "10.30.0.0/16", 300, op=g.CREATE),
        host_ip=host.underlay_ip,
    )


def _big(host: HostInfo) -> pb.GoalStateV2:
    return g.goal_state_v2(
        *(
            g.neighbor(
                f"nb-{i}",
                "vpc-df",
                "sn-df",
                f"10.30.{i // 250}.{i % 250 + 2}",
                f"fa:16:3e:01:{i // 256:02x}:{i % 256:02x}",
                "172.31.9.9",
            )
            for i in range(NEIGHBOURS)
        ),
        host_ip=host.underlay_ip,
    )


def _statuses(sb: Sandbox, msg: pb.GoalStateV2) -> dict[str, str]:
    (reply,) = sb.push_message(HOST, msg, timeout=60)
    return {s.resource_id: pb.OperationStatus.Name(s.operation_status) for s in reply.operation_statuses}


def _neighbour_flows(sb: Sandbox) -> int:
    on_switch = dump_cookies(sb, HOST)
    return sum(on_switch[cookie(Kind.NEIGHBOR, f"nb-{i}")] for i in range(NEIGHBOURS))


def _journal_failures(host: HostInfo) -> int:
    return pathlib.Path(host.log_file).read_text().count("event=journal_failed")


def test_grpc_disk_full_fails_cleanly_and_the_resend_is_programmed() -> None:
    with small_disk_host() as (sb, host):
        sb.restart_agent(HOST)
        assert set(_statuses(sb, _base(host)).values()) == {"SUCCESS"}
        first = _statuses(sb, _big(host))
        assert len(first) == NEIGHBOURS and set(first.values()) == {"FAILURE"}
        assert _neighbour_flows(sb) == 0
        assert sb.control(HOST, "status")["resources"]["neighbor"] == 0  # nothing half-held
        assert _journal_failures(host) == 1

        _grow_disk(host)
        second = _statuses(sb, _big(host))  # the controller's resend of the same goal state
        assert set(second.values()) == {"SUCCESS"}
        assert _neighbour_flows(sb) >= 2 * NEIGHBOURS  # read from OVS, not the agent


def test_kafka_disk_full_leaves_the_message_uncommitted_until_it_is_applied() -> None:
    require_tansu()
    with small_disk_host() as (sb, host), running_broker(netns=host.netns) as broker:
        broker.create_topic(TOPIC)
        broker.create_topic(REPLIES)
        sb.restart_agent(HOST, agent_args=["--config", str(agent_config(host, broker, REPLIES))])

        def committed() -> int:
            return committed_offset(broker, TOPIC, GROUP)

        base_offset = broker.produce(TOPIC, _base(host).SerializeToString())
        wait_for(lambda: committed() == base_offset + 1, 30, "the base goal state committed")
        big_offset = broker.produce(TOPIC, _big(host).SerializeToString())
        wait_for(lambda: _journal_failures(host) >= 2, 30, "two failed attempts at the big goal state")
        assert committed() == big_offset  # not committed: not lost
        assert _neighbour_flows(sb) == 0

        _grow_disk(host)  # the intake's retry now applies it, then commits
        wait_for(lambda: committed() == big_offset + 1, 60, "the big goal state committed")
        assert _neighbour_flows(sb) >= 2 * NEIGHBOURS
        sb.stop_agent(HOST)  # leaves the group while the broker still runs
