"""Planner golden tests: goal state in, sorted flow text (with table names) out."""

from __future__ import annotations

import logging

import pytest

from agent.dataplane.openflow.codec import FlowModCommand, encode_bundle_add
from agent.model.decode import decode_v2
from agent.model.resources import ResourceType
from agent.model.state import DesiredState
from agent.planner import overlay, security
from agent.planner.flows import match
from agent.planner.pipeline import TABLE_NAMES, Table
from agent.planner.plan import BASE_OWNER, Planner, neighbor_owner, port_owner, segment_owner
from agent.sandbox import goalstates as gs

HOST = "172.31.0.11"
TUNNEL = 9


def _planner(*states) -> Planner:
    state = DesiredState()
    state.apply(decode_v2(gs.goal_state_v2(*states, host_ip=HOST), HOST))
    planner = Planner(state, HOST)
    planner.set_tunnel(TUNNEL)
    planner.rebuild()
    return planner


def _text(planner: Planner, owner) -> list[str]:
    return sorted(f.text(TABLE_NAMES) for f in planner.flows(owner))


BASE = (gs.vpc("v1", 100), gs.subnet("s1", "v1", "10.0.1.0/24", 100))
PORT = gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05")
NEIGHBOR = gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12")


def test_port_flows_golden() -> None:
    planner = _planner(*BASE, PORT)
    assert _text(planner, port_owner("p1")) == []  # not bound yet: pending, nothing programmed
    assert planner.is_pending("p1")
    planner.set_interfaces([("tap-p1", "p1", 3, 0)])
    assert _text(planner, port_owner("p1")) == [
        "table=ARP_RESPONDER, priority=100, reg0=0x64, dl_type=0x806, arp_op=1, arp_tpa=10.0.1.5 "
        "actions=move:dl_src[0..47]->dl_dst[0..47],set_field:fa:16:3e:00:00:05->dl_src,set_field:2->arp_op,"
        "move:arp_sha[0..47]->arp_tha[0..47],move:arp_spa[0..31]->arp_tpa[0..31],"
        "set_field:fa:16:3e:00:00:05->arp_sha,set_field:10.0.1.5->arp_spa,output:IN_PORT",
        "table=CLASSIFY, priority=100, in_port=3 actions=set_field:0x64->reg0,set_field:0x0->reg1,"
        "goto_table:PORT_SECURITY",
        "table=L2_LOOKUP, priority=100, reg0=0x64, dl_dst=fa:16:3e:00:00:05 actions=output:3",
        "table=PORT_SECURITY, priority=100, in_port=3, dl_src=fa:16:3e:00:00:05, dl_type=0x800, "
        "nw_proto=17, nw_src=0.0.0.0, udp_src=68, udp_dst=67 actions=goto_table:DHCP",
        "table=PORT_SECURITY, priority=100, in_port=3, dl_src=fa:16:3e:00:00:05, dl_type=0x800, "
        "nw_src=10.0.1.5 actions=goto_table:SG_EGRESS",
        "table=PORT_SECURITY, priority=100, in_port=3, dl_src=fa:16:3e:00:00:05, dl_type=0x806, "
        "arp_spa=10.0.1.5, arp_sha=fa:16:3e:00:00:05 actions=goto_table:ARP_RESPONDER",
    ]


def test_neighbor_flows_golden() -> None:
    planner = _planner(*BASE, NEIGHBOR)
    assert _text(planner, neighbor_owner("n1")) == [
        "table=ARP_RESPONDER, priority=100, reg0=0x64, dl_type=0x806, arp_op=1, arp_tpa=10.0.1.6 "
        "actions=move:dl_src[0..47]->dl_dst[0..47],set_field:fa:16:3e:00:00:06->dl_src,set_field:2->arp_op,"
        "move:arp_sha[0..47]->arp_tha[0..47],move:arp_spa[0..31]->arp_tpa[0..31],"
        "set_field:fa:16:3e:00:00:06->arp_sha,set_field:10.0.1.6->arp_spa,output:IN_PORT",
        "table=L2_LOOKUP, priority=90, reg0=0x64, dl_dst=fa:16:3e:00:00:06 "
        "actions=set_field:0x64->tun_id,set_field:172.31.0.12->tun_dst,output:9",
    ]


def test_segment_flood_stays_in_its_vni_and_follows_membership() -> None:
    planner = _planner(*BASE, PORT, NEIGHBOR)
    assert planner.set_interfaces([("tap-p1", "p1", 3, 0)]) == {
        port_owner("p1"),
        security.port_owner("p1"),
        segment_owner(100),
    }
    assert _text(planner, segment_owner(100)) == [
        "table=L2_LOOKUP, priority=50, reg0=0x64, dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 "
        "actions=output:3,set_field:0x64->tun_id,set_field:172.31.0.12->tun_dst,output:9",
        "table=L2_LOOKUP, priority=60, reg0=0x64, reg1=0x1/0x1, dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 "
        "actions=output:3",
    ]
    # A second neighbour on the same remote host does not change the flood list.
    n2 = gs.neighbor("n2", "v1", "s1", "10.0.1.7", "fa:16:3e:00:00:07", "172.31.0.12")
    planner.state.apply(decode_v2(gs.goal_state_v2(n2, host_ip=HOST), HOST))
    assert planner.touch(ResourceType.NEIGHBOR, "n2") == {neighbor_owner("n2")}


def test_admin_down_port_drops_at_intake() -> None:
    planner = _planner(*BASE, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", admin_up=False))
    planner.set_interfaces([("tap-p1", "p1", 3, 0)])
    assert _text(planner, port_owner("p1")) == ["table=CLASSIFY, priority=100, in_port=3 actions=drop"]


def test_neighbor_on_this_host_is_left_to_the_local_port() -> None:
    planner = _planner(*BASE, gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", HOST))
    assert planner.flows(neighbor_owner("n1")) == []


def test_base_flows_cover_every_table() -> None:
    planner = _planner()
    tables = {f.table for f in planner.flows(BASE_OWNER)}
    assert tables == {t.value for t in Table}


def test_builders_emit_canonical_matches() -> None:
    planner = _planner(*BASE, PORT, NEIGHBOR)
    planner.set_interfaces([("tapp1", "p1", 3, 0)])
    for owner in planner.all_owners():
        for flow in planner.flows(owner):
            assert match(*flow.match) == flow.match, flow.text()


def test_subnet_change_visits_its_members_only() -> None:
    """A new VNI re-indexes the subnet's members (flood lists move); a new gateway only re-plans them."""
    other = gs.subnet("s2", "v1", "10.0.2.0/24", 300)
    elsewhere = gs.neighbor("n2", "v1", "s2", "10.0.2.6", "fa:16:3e:00:00:26", "172.31.0.13")
    planner = _planner(*BASE, other, PORT, NEIGHBOR, elsewhere)
    planner.set_interfaces([("tap-p1", "p1", 3, 0)])

    def update(subnet) -> set:
        (outcome,) = planner.state.apply(decode_v2(gs.goal_state_v2(subnet, host_ip=HOST), HOST))
        return planner.touch(ResourceType.SUBNET, outcome.request.id)

    moved = update(gs.subnet("s1", "v1", "10.0.1.0/24", 200, op=gs.UPDATE, revision=2))
    assert {port_owner("p1"), neighbor_owner("n1"), segment_owner(100), segment_owner(200)} <= moved
    assert neighbor_owner("n2") not in moved
    assert planner.flows(segment_owner(100)) == []
    assert any("172.31.0.12" in f.text() for f in planner.flows(segment_owner(200)))
    assert all("reg0=0xc8" in f.text() for f in planner.flows(neighbor_owner("n1")))

    regated = update(gs.subnet("s1", "v1", "10.0.1.0/24", 200, "10.0.1.254", op=gs.UPDATE, revision=3))
    assert {port_owner("p1"), neighbor_owner("n1")} <= regated
    assert not {segment_owner(100), segment_owner(200), neighbor_owner("n2")} & regated


def test_flood_flow_of_a_segment_with_thousands_of_hosts_still_encodes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One flow names every remote host; past what one OpenFlow message holds (64 KiB), the
    last hosts are left out and logged rather than the bundle (and every start) failing.
    (The neighbours' addresses stay clear of PORT's: a second claim would be refused.)"""
    subnet = gs.subnet("s1", "v1", "10.0.0.0/16", 100)
    hosts = [f"172.20.{n >> 8}.{n & 0xFF}" for n in range(2500)]
    neighbours = [
        gs.neighbor(
            f"n{n}",
            "v1",
            "s1",
            f"10.0.{100 + (n >> 8)}.{n & 0xFF}",
            f"fa:16:3e:01:{n >> 8:02x}:{n & 0xFF:02x}",
            h,
        )
        for n, h in enumerate(hosts)
    ]
    planner = _planner(BASE[0], subnet, PORT, *neighbours)
    planner.set_interfaces([("tap-p1", "p1", 3, 0)])
    with caplog.at_level(logging.WARNING, "aca.planner"):
        flood = planner.flows(segment_owner(100))
    sizes = [len(encode_bundle_add(1, 0, f, FlowModCommand.ADD, 1)) for f in flood]
    assert max(sizes) <= 0xFFFF
    kept = overlay.flood_room(1)
    assert f"event=flood_hosts_left_out vni=100 hosts=2500 kept={kept}" in caplog.text
    assert kept > 2000
    # With many local ports the room shrinks accordingly, and the flow still encodes.
    ports, remote = list(range(1, 301)), hosts[: overlay.flood_room(300)]
    for f in overlay.flood_flows(100, ports, remote, TUNNEL):
        assert len(encode_bundle_add(1, 0, f, FlowModCommand.ADD, 1)) <= 0xFFFF


def test_a_zero_prefix_matches_anything_as_ovs_stores_it() -> None:
    """A /0 allowed-address pair or route leaves its address field out (OVS drops a zero mask),
    so the planned flow equals its dump and a restart rewrites nothing."""
    any_source = gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", pairs=[("0.0.0.0/0", "")])
    planner = _planner(*BASE, any_source)
    planner.set_interfaces([("tap-p1", "p1", 3, 0)])
    flows = _text(planner, port_owner("p1"))
    security = [f for f in flows if f.startswith("table=PORT_SECURITY") and "udp_src" not in f]
    assert security == sorted(
        [
            "table=PORT_SECURITY, priority=100, in_port=3, dl_src=fa:16:3e:00:00:05, dl_type=0x806, "
            "arp_sha=fa:16:3e:00:00:05 actions=goto_table:ARP_RESPONDER",
            "table=PORT_SECURITY, priority=100, in_port=3, dl_src=fa:16:3e:00:00:05, dl_type=0x806, "
            "arp_spa=10.0.1.5, arp_sha=fa:16:3e:00:00:05 actions=goto_table:ARP_RESPONDER",
            "table=PORT_SECURITY, priority=100, in_port=3, dl_src=fa:16:3e:00:00:05, dl_type=0x800 "
            "actions=goto_table:SG_EGRESS",
            "table=PORT_SECURITY, priority=100, in_port=3, dl_src=fa:16:3e:00:00:05, dl_type=0x800, "
            "nw_src=10.0.1.5 actions=goto_table:SG_EGRESS",
        ]
    )
