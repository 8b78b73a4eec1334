"""acactl against real agents on two sandbox hosts (one router, two subnets): status, check
and --repair after drift made with ovs-ofctl, set-log-level, trace through ofproto/trace on the
host's OVS (same subnet on one host, across VXLAN, routed, DHCP, spoofed source), and plan
compared with what the real push then changes in OVS."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format

from agent._pb import goalstate_pb2 as pb
from agent.planner.cookies import Kind, cookie
from agent.planner.pipeline import Table
from agent.sandbox import goalstates as gs
from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for
from agent.sandbox.two_subnets import DVR, GW1, deploy, goal_state
from tests.support.agent_host import scratch_sandbox
from tests.support.parts import require_ovs

pytestmark = pytest.mark.integration
require_ovs()

# vm → (host, subnet, ip, mac, gateway ip); "f" is only ever a neighbour (no VM behind it)
VMS = {
    "a": ("host1", "s1", "10.1.1.10", "fa:16:3e:00:00:0a", GW1[0]),
    "b": ("host2", "s2", "10.1.2.20", "fa:16:3e:00:00:0b", "10.1.2.1"),
    "c": ("host1", "s2", "10.1.2.30", "fa:16:3e:00:00:0c", "10.1.2.1"),
    "d": ("host1", "s1", "10.1.1.40", "fa:16:3e:00:00:0d", GW1[0]),
}
GHOST = {"f": ("host2", "s1", "10.1.1.60", "fa:16:3e:00:00:0f", GW1[0])}
ACACTL = pathlib.Path(sys.executable).parent / "acactl"


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with scratch_sandbox() as sb:
        # f: a neighbour of host1's only
        deploy(sb, VMS, lambda host: goal_state(sb, host, {**VMS, **GHOST} if host == "host1" else VMS))
        yield sb


def acactl(box: Sandbox, *args: str, host: str = "host1") -> subprocess.CompletedProcess[str]:
    """The real CLI, as an operator runs it."""
    sock = box.host(host).control_socket
    return subprocess.run([str(ACACTL), "--socket", sock, *args], capture_output=True, text=True, timeout=60)


def acactl_json(box: Sandbox, *args: str) -> tuple[int, Any]:
    proc = acactl(box, "--json", *args)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_status_is_readable_and_its_exit_code_says_ready(box: Sandbox) -> None:
    text = acactl(box, "status")
    assert text.returncode == 0, text.stdout + text.stderr
    assert text.stdout.startswith(f"host1 ({box.host('host1').underlay_ip}, bridge br-int): ready"), (
        text.stdout
    )
    assert "owners failed: 0" in text.stdout
    code, status = acactl_json(box, "status")
    assert code == 0 and status["ready"] and status["owners_failed"] == 0


def test_version_and_completion() -> None:
    version = subprocess.run([str(ACACTL), "--version"], capture_output=True, text=True, check=True)
    assert re.fullmatch(r"acactl \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout
    agent = subprocess.run(
        [str(ACACTL.parent / "aca-agent"), "--version"], capture_output=True, text=True, check=True
    )
    assert agent.stdout.startswith("aca-agent "), agent.stdout
    script = subprocess.run([str(ACACTL), "completion", "bash"], capture_output=True, text=True, check=True)
    # bash itself reads the script and completes the subcommands and their choices from it
    probe = (
        f"{script.stdout}\nCOMP_WORDS=(acactl set-log-level de); COMP_CWORD=2; _acactl; "
        'echo "${COMPREPLY[@]}"; COMP_WORDS=(acactl tr); COMP_CWORD=1; _acactl; echo "${COMPREPLY[@]}"'
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["debug", "trace"], out


def test_check_reports_drift_per_owner_and_repair_fixes_it(box: Sandbox) -> None:
    owner = cookie(Kind.PORT, "port-d")
    ofctl = ["ovs-ofctl", "-O", "OpenFlow14"]
    dump = box.exec("host1", [*ofctl, "--no-stats", "dump-flows", "br-int", f"cookie={owner:#x}/-1,table=10"])
    found = re.search(r"priority=(\d+),(\S+) actions", dump.stdout)
    assert found is not None, dump.stdout
    # Behind the agent's back: one of port-d's flows deleted, one with its cookie added.
    box.exec("host1", [*ofctl, "--strict", "del-flows", "br-int", f"table=10,priority={found[1]},{found[2]}"])
    stray = f"cookie={owner:#x},table=40,priority=7,dl_dst=fa:16:3e:99:99:99,actions=drop"
    box.exec("host1", [*ofctl, "add-flow", "br-int", stray])
    code, drift = acactl_json(box, "check")
    assert code == 3
    assert drift["counts"] == {"missing": 1, "differ": 0, "extra": 1}, drift
    assert drift["owners"] == {"port:port-d": {"missing": 1, "differ": 0, "extra": 1}}
    assert drift["missing"][0]["owner"] == "port:port-d"
    assert drift["extra"][0]["owner"] == "port:port-d"
    assert "dl_dst=fa:16:3e:99:99:99" in drift["extra"][0]["flow"]
    text = acactl(box, "check")
    assert text.returncode == 3 and text.stdout.startswith("DRIFT:"), text.stdout
    assert "port:port-d: missing=1 extra=1" in text.stdout

    repaired = acactl(box, "check", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "\nrepaired by a resync: added=1 deleted=1\nok: " in repaired.stdout, repaired.stdout
    assert acactl(box, "check").returncode == 0
    assert box.ping("a", VMS["d"][2], count=1).returncode == 0


def test_resync_and_set_log_level(box: Sandbox) -> None:
    code, result = acactl_json(box, "resync")
    assert code == 0 and result == {**result, "added": 0, "deleted": 0, "failed": []}
    log = pathlib.Path(box.host("host1").log_file)
    assert acactl(box, "set-log-level", "debug").stdout == "log level: debug\n"
    try:
        assert "event=log_level_set level=debug by=control_socket" in log.read_text()
        assert acactl(box, "resync").returncode == 0  # settles afterwards, logged at debug
        wait_for(lambda: "level=DEBUG" in log.read_text(), 10, "a debug line in the agent's log")
    finally:
        assert acactl(box, "set-log-level", "info").returncode == 0
    bad = acactl(box, "set-log-level", "loud")
    assert bad.returncode == 2  # argparse: not a level


def _trace(box: Sandbox, *args: str) -> dict[str, Any]:
    code, result = acactl_json(box, "trace", *args)
    assert code == 0, result
    for step in result["steps"]:  # every step of br-int names its table and its flow's owner
        assert step["table_name"] and step["owner"] and step["owner"] != "not the agent's", step
    return result


def _owners(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["table_name"], s["owner"]) for s in result["steps"]]


def test_trace_same_subnet_on_one_host(box: Sandbox) -> None:
    result = _trace(box, "--in-port", "port-a", "--dst-ip", VMS["d"][2])
    assert result["outputs"] == [{"to": "port", "port": "port-d", "ofport": _ofport(box, "port-d")}]
    assert _owners(result)[0] == ("CLASSIFY", "port:port-a")
    assert _owners(result)[1] == ("PORT_SECURITY", "port:port-a")
    assert _owners(result)[-1] == ("L2_LOOKUP", "port:port-d")
    text = acactl(box, "trace", "--in-port", "port-a", "--dst-ip", VMS["d"][2]).stdout
    assert text.splitlines()[-1] == f"OUTPUT: port port-d (ofport {_ofport(box, 'port-d')})", text


def test_trace_across_vxlan(box: Sandbox) -> None:
    result = _trace(box, "--in-port", "port-c", "--dst-ip", VMS["b"][2], "--proto", "tcp", "--dst-port", "22")
    (out,) = result["outputs"]
    assert out["to"] == "tunnel" and out["remote_host"] == box.host("host2").underlay_ip, out
    assert out["owner"] == "neighbor:port-b"
    assert _owners(result)[-1] == ("L2_LOOKUP", "neighbor:port-b")


def test_trace_from_the_tunnel_to_a_local_port(box: Sandbox) -> None:
    """What host2's VM b sends to c arrives on host1 over VXLAN: the source, its host and the
    VNI come from the neighbour holding b's address."""
    result = _trace(box, "--in-port", "tunnel", "--src-ip", VMS["b"][2], "--dst-ip", VMS["c"][2])
    assert f"tun_src={box.host('host2').underlay_ip}" in result["packet"], result["packet"]
    assert result["outputs"] == [{"to": "port", "port": "port-c", "ofport": _ofport(box, "port-c")}]
    assert _owners(result)[0] == ("CLASSIFY", "base:base")  # the tunnel's intake is the skeleton's
    assert _owners(result)[-1] == ("L2_LOOKUP", "port:port-c")


def test_trace_routed_by_the_dvr(box: Sandbox) -> None:
    result = _trace(box, "--in-port", "port-a", "--dst-ip", VMS["b"][2])  # dst MAC: the gateway's
    assert f"dl_dst={GW1[1]}" in result["packet"]
    owners = _owners(result)
    assert ("L3_GATEWAY", "router:r1") in owners
    assert ("L3_ROUTING", "neighbor:port-b") in owners  # the host route is the neighbour's
    routing = next(s for s in result["steps"] if s["table_name"] == "L3_ROUTING")
    assert f"set_field:{DVR['host1']}->eth_src" in routing["actions"], routing
    (out,) = result["outputs"]
    assert out["to"] == "tunnel" and out["remote_host"] == box.host("host2").underlay_ip


def test_trace_routed_without_a_host_route_goes_to_the_routing_engine(box: Sandbox) -> None:
    result = _trace(box, "--in-port", "port-a", "--dst-ip", "10.1.2.99")  # nobody holds it
    assert result["outputs"] == [{"to": "routing_engine"}], result
    assert _owners(result)[-1] == ("L3_ROUTING", "base:base")  # the table's miss: punted


def test_trace_dhcp_request_goes_to_the_responder(box: Sandbox) -> None:
    result = _trace(box, "--in-port", "port-a", "--proto", "dhcp")
    assert result["outputs"] == [{"to": "dhcp_engine"}], result
    assert ("DHCP", "dhcp:port:port-a") in _owners(result)
    text = acactl(box, "trace", "--in-port", "port-a", "--proto", "dhcp").stdout
    assert text.splitlines()[-1] == "OUTPUT: to the DHCP engine", text


def test_trace_spoofed_source_is_dropped_by_port_security(box: Sandbox) -> None:
    result = _trace(box, "--in-port", "port-a", "--src-ip", "10.1.1.99", "--dst-ip", VMS["d"][2])
    assert result["verdict"] == "drop" and result["table"] == "PORT_SECURITY", result
    assert result["owner"] == "base:base"  # the table's default: nothing of port-a allows it
    assert "port security" in result["reason"]
    text = acactl(box, "trace", "--in-port", "port-a", "--src-ip", "10.1.1.99", "--dst-ip", VMS["d"][2])
    assert text.stdout.splitlines()[-1].startswith("DROP in PORT_SECURITY: port security"), text.stdout


def _ofport(box: Sandbox, port_id: str) -> int:
    return next(p["ofport"] for p in box.control("host1", "ports") if p["id"] == port_id)


def _dump(box: Sandbox) -> Counter[str]:
    """Every flow on host1's br-int as ovs-ofctl prints it, without counters."""
    out = box.exec("host1", ["ovs-ofctl", "-O", "OpenFlow14", "--no-stats", "dump-flows", "br-int"]).stdout
    return Counter(line.strip() for line in out.splitlines() if "cookie=" in line)


def _keys(lines: Counter[str]) -> Counter[tuple[int, int, int]]:
    """(cookie, table, priority) of each dumped flow (ovs-ofctl leaves table=0 out)."""
    out: Counter[tuple[int, int, int]] = Counter()
    for line, n in lines.items():
        found = re.match(r"cookie=(0x[0-9a-f]+), (?:table=(\d+), )?priority=(\d+)", line)
        assert found is not None, line
        out[(int(found[1], 16), int(found[2] or 0), int(found[3]))] += n
    return out


def _planned(rows: list[dict[str, str]]) -> Counter[tuple[int, int, int]]:
    out: Counter[tuple[int, int, int]] = Counter()
    for row in rows:
        found = re.match(r"table=(\w+), priority=(\d+)", row["flow"])
        assert found is not None, row
        out[(int(row["cookie"], 16), Table[found[1]].value, int(found[2]))] += 1
    return out


def _plan(box: Sandbox, path: str) -> dict[str, Any]:
    code, plan = acactl_json(box, "plan", path)
    assert code == 0, plan
    return plan


def test_plan_lists_what_the_push_then_changes(box: Sandbox) -> None:
    """A goal state that adds a port (VM e, plugged) and deletes neighbour f: the plan's flows
    are exactly the flows OVS gains and loses when it is pushed for real (a changed flow leaves
    its old line and gains its new one)."""
    box.vm_add("host1", "e", "fa:16:3e:00:00:0e", "10.1.1.50/24", gw=GW1[0], iface_id="port-e")
    try:
        msg = gs.goal_state_v2(
            gs.vpc("v1", 100, "10.1.0.0/16", op=gs.INFO),
            gs.subnet("s1", "v1", "10.1.1.0/24", 101, *GW1),
            gs.port("port-e", "v1", "s1", "10.1.1.50", "fa:16:3e:00:00:0e"),
            gs.neighbor(
                "port-f",
                "v1",
                "s1",
                "10.1.1.60",
                "fa:16:3e:00:00:0f",
                box.host("host2").underlay_ip,
                kind=pb.L3,
                op=gs.DELETE,
                revision=2,
            ),
            host_ip=box.host("host1").underlay_ip,
        )
        with tempfile.NamedTemporaryFile("w", suffix=".json") as fh:
            fh.write(json_format.MessageToJson(msg))
            fh.flush()

            def port_e_bound() -> bool:  # the agent has seen VM e's interface in OVSDB
                rows = _plan(box, fh.name)["resources"]
                return any(r["id"] == "port-e" and r["status"] == "SUCCESS" for r in rows)

            wait_for(port_e_bound, 10, "port-e planned as bound")
            before = _dump(box)
            plan = _plan(box, fh.name)
            text = acactl(box, "plan", fh.name).stdout
            assert _dump(box) == before  # planning changed nothing on the switch ...
            assert _plan(box, fh.name) == plan  # ... nor in the agent
        statuses = {(r["type"], r["id"]): r["status"] for r in plan["resources"]}
        assert statuses == {("port", "port-e"): "SUCCESS", ("neighbor", "port-f"): "SUCCESS"}, plan
        assert "port:port-e" in {r["owner"] for r in plan["added"]}
        assert {r["owner"] for r in plan["removed"]} >= {"neighbor:port-f"}
        assert "(nothing applied)" in text and "+ port:port-e" in text and "- neighbor:port-f" in text

        (reply,) = box.push_message("host1", msg)
        assert {s.resource_id: s.operation_status for s in reply.operation_statuses} == {
            "port-e": pb.SUCCESS,
            "port-f": pb.SUCCESS,
        }
        after = _dump(box)
        assert _keys(after - before) == _planned(plan["added"]) + _planned(plan["changed"])
        assert _keys(before - after) == _planned(plan["removed"]) + _planned(plan["changed"])
    finally:
        box.vm_del("e")
