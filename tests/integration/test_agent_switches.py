"""README's switches that change the data path, on a real host: ``--no-dhcp`` (no responder, no DHCP
steering: a real client gets no answer while the VM's other traffic flows) and
``--no-route-fast-path`` (no punt port; a routed packet without a host-route flow is dropped),
and ``[dhcp] direct_replies = false`` (replies back through OVS)."""

from __future__ import annotations

import re

import pytest

from agent.planner.cookies import Kind, cookie
from agent.planner.pipeline import Table
from agent.sandbox import goalstates as gs
from agent.sandbox.poll import wait_for
from tests.support.agent_host import scratch_sandbox, status_by_id
from tests.support.parts import require_ovs
from tests.support.traffic import dump_cookies, dump_flows, port_state

pytestmark = pytest.mark.integration

require_ovs()

HOST = "sw1"
VPC, SUBNET, VNI = "vpc-sw", "sn-sw", 3300
GATEWAY, GATEWAY_MAC = "10.51.0.1", "fa:16:3e:51:00:01"


def test_no_dhcp_and_no_route_fast_path() -> None:
    with scratch_sandbox() as sb:
        host = sb.host_up(HOST, agent_args=["--no-dhcp", "--no-route-fast-path"])
        ports = sb.exec(HOST, ["ovs-vsctl", "list-ports", "br-int"]).stdout.split()
        assert "aca-dhcp" not in ports and "aca-route" not in ports
        status = sb.control(HOST, "status")
        assert status["dhcp"] is None and status["routing"] is None

        vms = [("swa", 2), ("swb", 3)]
        for name, n in vms:
            sb.vm_add(HOST, name, f"fa:16:3e:51:00:{n:02x}", f"10.51.0.{n}/24", iface_id=f"port-{name}")
        states = [
            gs.vpc(VPC, VNI),
            gs.subnet(SUBNET, VPC, "10.51.0.0/24", VNI, GATEWAY, GATEWAY_MAC, op=gs.CREATE),
        ]
        for name, n in vms:
            mac = f"fa:16:3e:51:00:{n:02x}"
            states += [
                gs.port(f"port-{name}", VPC, SUBNET, f"10.51.0.{n}", mac),
                gs.dhcp(f"dhcp-{name}", SUBNET, mac, f"10.51.0.{n}"),
            ]
        (reply,) = sb.push_message(HOST, gs.goal_state_v2(*states, host_ip=host.underlay_ip))
        assert set(status_by_id(reply).values()) <= {"SUCCESS", "PENDING"}, status_by_id(reply)
        for name, _n in vms:
            wait_for(
                lambda name=name: port_state(sb, HOST, f"port-{name}") == "programmed", 20, f"{name} bound"
            )

        # No DHCP steering anywhere, and the L3_ROUTING miss drops instead of punting.
        on_switch = dump_cookies(sb, HOST)
        assert all(on_switch[cookie(Kind.DHCP, f"port:port-{name}")] == 0 for name, _n in vms)
        routing_miss = [f for f in dump_flows(sb, HOST) if f"table={int(Table.L3_ROUTING)}," in f]
        assert any("priority=0 actions=drop" in f for f in routing_miss), routing_miss

        # A real client asks twice and gets no answer ...
        asked = sb.vm_exec("swa", ["busybox", "udhcpc", "-n", "-q", "-f", "-t", "2", "-T", "1", "-i", "eth0"])
        assert asked.returncode != 0, asked.stdout + asked.stderr
        # ... while the same VM's traffic, sent after it, does flow: the silence was the switch.
        assert sb.ping("swa", "10.51.0.3", count=2).returncode == 0


def test_dhcp_replies_back_through_ovs_when_direct_replies_is_off(tmp_path) -> None:
    """``[dhcp] direct_replies = false``: a real client gets its lease, and the replies enter OVS
    on the responder's port (with direct replies they leave from the VM's device and that port
    carries nothing into the switch)."""
    config = tmp_path / "agent.toml"
    config.write_text("[dhcp]\ndirect_replies = false\n")
    with scratch_sandbox() as sb:
        host = sb.host_up(HOST, agent_args=["--config", str(config)])
        mac = "fa:16:3e:51:00:04"
        sb.vm_add(HOST, "swd", mac, "0.0.0.0/32", iface_id="port-swd")
        states = [
            gs.vpc(VPC, VNI),
            gs.subnet(SUBNET, VPC, "10.51.0.0/24", VNI, GATEWAY, GATEWAY_MAC, op=gs.CREATE),
            gs.port("port-swd", VPC, SUBNET, "10.51.0.4", mac),
            gs.dhcp("dhcp-swd", SUBNET, mac, "10.51.0.4"),
        ]
        (reply,) = sb.push_message(HOST, gs.goal_state_v2(*states, host_ip=host.underlay_ip))
        assert set(status_by_id(reply).values()) <= {"SUCCESS", "PENDING"}, status_by_id(reply)
        wait_for(lambda: port_state(sb, HOST, "port-swd") == "programmed", 20, "swd bound")

        def into_switch() -> int:
            out = sb.exec(HOST, ["ovs-ofctl", "-O", "OpenFlow14", "dump-ports", "br-int", "aca-dhcp"]).stdout
            return int(re.search(r"rx pkts=(\d+)", out).group(1))

        before = into_switch()
        got = sb.vm_exec("swd", ["busybox", "udhcpc", "-n", "-q", "-f", "-t", "3", "-T", "2", "-i", "eth0"])
        assert got.returncode == 0 and "10.51.0.4" in got.stdout + got.stderr, got.stdout + got.stderr
        assert into_switch() - before >= 2  # OFFER and ACK entered OVS from the responder
