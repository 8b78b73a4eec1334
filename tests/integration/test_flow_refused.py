"""OVS refusing flows, end to end: FAILURE only for what OVS refused, and repaired without a resend.

A real refusal: OVSDB's Flow_Table ``flow_limit`` with ``overflow_policy=refuse`` on the L2 lookup
table makes ovs-vswitchd answer OFPFMFC_TABLE_FULL once the table is full. The agent must answer
SUCCESS exactly for the neighbours whose flows OVS holds and FAILURE (with the reason) for the
rest; when room is made, the repair timer programs the failed ones without the controller resending.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.planner.cookies import Kind, cookie
from agent.planner.pipeline import Table
from agent.sandbox import goalstates as g
from agent.sandbox.hosts import HostInfo, Sandbox
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import require_ovs
from tests.support.traffic import dump_cookies

pytestmark = pytest.mark.integration

require_ovs()

HOST = "rf1"
ROOM, ASKED = 10, 15  # the table has room for 10 neighbours' L2 flows; 15 are pushed


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with scratch_sandbox() as sb:
        sb.host_up(HOST)
        yield sb


def _table_flows(sb: Sandbox, table: int) -> int:
    out = sb.exec(HOST, ["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "br-int", f"table={table}"]).stdout
    return len(re.findall(r"cookie=", out))


def _neighbours(host: HostInfo, count: int) -> pb.GoalStateV2:
    return g.goal_state_v2(
        *(
            g.neighbor(
                f"nb-{i}", "vpc-rf", "sn-rf", f"10.40.0.{i + 2}", f"fa:16:3e:02:00:{i:02x}", "172.31.9.9"
            )
            for i in range(count)
        ),
        host_ip=host.underlay_ip,
    )


def _statuses(sb: Sandbox, msg: pb.GoalStateV2) -> dict[str, str]:
    (reply,) = sb.push_message(HOST, msg)
    return {s.resource_id: pb.OperationStatus.Name(s.operation_status) for s in reply.operation_statuses}


def test_refused_flows_fail_their_resource_only_and_are_repaired(sandbox: Sandbox) -> None:
    host = sandbox.host(HOST)
    base = g.goal_state_v2(
        g.vpc("vpc-rf", 400),
        g.subnet("sn-rf", "vpc-rf", "10.40.0.0/24", 400, op=g.CREATE),
        host_ip=host.underlay_ip,
    )
    assert set(_statuses(sandbox, base).values()) == {"SUCCESS"}
    limit = _table_flows(sandbox, Table.L2_LOOKUP) + ROOM
    table = ["Flow_Table", f"flow_limit={limit}", "overflow_policy=refuse"]
    where = ["Bridge", "br-int", f"flow_tables:{int(Table.L2_LOOKUP)}=@ft"]
    sandbox.exec(HOST, ["ovs-vsctl", "--", "--id=@ft", "create", *table, "--", "set", *where], check=True)

    statuses = _statuses(sandbox, _neighbours(host, ASKED))
    on_switch = dump_cookies(sandbox, HOST)
    held = {nid for nid in statuses if on_switch[cookie(Kind.NEIGHBOR, nid)] == 2}
    # A reply is a promise: SUCCESS exactly for the neighbours whose flows OVS holds.
    assert {nid for nid, s in statuses.items() if s == "SUCCESS"} == held
    assert len(held) == ROOM
    refused = set(statuses) - held
    assert {statuses[nid] for nid in refused} == {"FAILURE"}
    assert all(on_switch[cookie(Kind.NEIGHBOR, nid)] == 0 for nid in refused)  # nothing half-done
    status = sandbox.control(HOST, "status")
    assert status["owners_failed"] == ASKED - ROOM
    assert all("neighbor:" in f["owner"] and f["reason"] for f in status["failed"])
    assert any("TABLE_FULL" in f["reason"] for f in status["failed"])
    states = {n["id"]: n["state"] for n in sandbox.control(HOST, "neighbours")}
    assert {nid for nid, s in states.items() if s == "failed"} == refused

    sandbox.exec(HOST, ["ovs-vsctl", "clear", "Bridge", "br-int", "flow_tables"], check=True)
    # No resend: the agent's repair timer programs the failed owners once OVS takes them.
    wait_for(
        lambda: all(dump_cookies(sandbox, HOST)[cookie(Kind.NEIGHBOR, nid)] == 2 for nid in refused),
        30,
        "the refused neighbours programmed by the repair timer",
    )
    wait_for(lambda: sandbox.control(HOST, "status")["owners_failed"] == 0, 10, "no failed owner left")
    assert set(_statuses(sandbox, _neighbours(host, ASKED)).values()) == {"SUCCESS"}
