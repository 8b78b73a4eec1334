"""The agent rides out OVS restarts: ovs-vswitchd (flows gone) is replayed from memory under
flow-restore-wait; ovsdb-server's restart is survived by the IDL reconnecting."""

from __future__ import annotations

import collections
import pathlib
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from agent.planner.cookies import Kind, cookie
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration
require_ovs()

VPC, SUBNET, VNI = "vpc-r", "subnet-r", 4242


def _cookies(box: Sandbox, host: str) -> collections.Counter[int]:
    out = box.exec(host, ["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "br-int"]).stdout
    return collections.Counter(int(c, 16) for c in re.findall(r"cookie=(0x[0-9a-f]+)", out))


def _flow_restore_wait(box: Sandbox, host: str) -> str:
    return box.exec(host, ["ovs-vsctl", "get", "Open_vSwitch", ".", "other_config"]).stdout


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with scratch_sandbox() as sb:
        ip = sb.host_up("host1").underlay_ip
        for n in (1, 2):
            sb.vm_add("host1", f"r{n}", f"fa:16:3e:42:00:0{n}", f"10.42.0.{n}/24", iface_id=f"port-r{n}")
        ports = [gs.port(f"port-r{n}", VPC, SUBNET, f"10.42.0.{n}", f"fa:16:3e:42:00:0{n}") for n in (1, 2)]
        reply = sb.push_message(
            "host1",
            gs.goal_state_v2(
                gs.vpc(VPC, VNI), gs.subnet(SUBNET, VPC, "10.42.0.0/24", VNI), *ports, host_ip=ip
            ),
        )[0]
        assert {s.operation_status for s in reply.operation_statuses} == {gs.pb.SUCCESS}
        assert sb.ping("r1", "10.42.0.2", count=2).returncode == 0
        yield sb


def test_vswitchd_restart_is_replayed_from_memory(box: Sandbox) -> None:
    before = _cookies(box, "host1")
    box.ovs("host1").restart_vswitchd()
    wait_for(lambda: _cookies(box, "host1") == before, 20, "flows replayed after ovs-vswitchd restart")
    wait_for(
        lambda: "flow-restore-wait" not in _flow_restore_wait(box, "host1"), 10, "flow-restore-wait cleared"
    )
    assert box.ping("r1", "10.42.0.2", count=2).returncode == 0
    status = box.control("host1", "status")
    assert status["dataplane_ready"] is True
    log = pathlib.Path(box.host("host1").log_file).read_text()
    assert "event=openflow_reconnected" in log


def test_ovsdb_server_restart_is_survived(box: Sandbox) -> None:
    box.ovs("host1").restart_ovsdb()
    # A VM plugged after the restart still binds: the IDL reconnected and reports interfaces.
    box.vm_add("host1", "r3", "fa:16:3e:42:00:03", "10.42.0.3/24", iface_id="port-r3")
    reply = box.push_message(
        "host1", gs.goal_state_v2(gs.port("port-r3", VPC, SUBNET, "10.42.0.3", "fa:16:3e:42:00:03"))
    )
    assert reply[0].operation_statuses[0].operation_status in (gs.pb.SUCCESS, gs.pb.PENDING)
    wait_for(
        lambda: (
            next(p for p in box.control("host1", "ports") if p["id"] == "port-r3")["state"] == "programmed"
        ),
        20,
        "port-r3 programmed after ovsdb-server restart",
    )
    assert box.ping("r3", "10.42.0.1", count=2).returncode == 0


def test_restart_repairs_flows_that_drifted_behind_its_back(box: Sandbox) -> None:
    """Behind the agent's back one of its flows is deleted, a stale flow with its cookie layout
    and a foreign flow are added: `acactl check` reports exactly that drift; the restarted agent
    puts its flow back, removes its stale one, leaves the foreign one alone and rewrites nothing
    else."""
    before = _cookies(box, "host1")
    port = cookie(Kind.PORT, "port-r1")
    stale = cookie(Kind.NEIGHBOR, "gone-long-ago")
    ofctl = ["ovs-ofctl", "-O", "OpenFlow14"]
    drift = [
        ["del-flows", "br-int", f"cookie={port:#x}/-1"],
        [
            "add-flow",
            "br-int",
            f"cookie={stale:#x},table=40,priority=7,dl_dst=fa:16:3e:99:99:99,actions=drop",
        ],
        ["add-flow", "br-int", "cookie=0x1234,table=40,priority=5,dl_dst=fa:16:3e:88:88:88,actions=drop"],
    ]
    for args in drift:
        box.exec("host1", [*ofctl, *args], check=True)
    check = box.control("host1", "check")
    assert check["counts"] == {"missing": before[port], "differ": 0, "extra": 1}
    assert {r["owner"] for r in check["missing"]} == {"port:port-r1"}
    assert check["extra"][0]["cookie"] == f"{stale:#018x}"
    text = _acactl(box, "check")
    assert text.returncode == 3 and text.stdout.startswith("DRIFT:") and "missing cookie=" in text.stdout

    box.restart_agent("host1", signal.SIGKILL)
    wait_for(lambda: box.control("host1", "status")["dataplane_ready"], 20, "the restarted agent's resync")
    after = _cookies(box, "host1")
    assert after[0x1234] == 1  # not ours: untouched
    del after[0x1234]
    assert after == before  # ours: exactly as before (the deleted one back, the stale one gone)
    log = pathlib.Path(box.host("host1").log_file).read_text()
    resync = re.findall(r"event=resync .*?added=(\d+) deleted=(\d+)", log)
    assert resync[-1] == (str(before[port]), "1")  # only the drift was rewritten
    ok = _acactl(box, "check")
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stdout
    assert box.ping("r1", "10.42.0.2", count=2).returncode == 0


def _acactl(box: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as an operator runs it (text output and exit code)."""
    acactl = pathlib.Path(sys.executable).parent / "acactl"
    socket = box.host("host1").control_socket
    return subprocess.run(
        [str(acactl), "--socket", socket, *args], capture_output=True, text=True, timeout=30
    )
