"""`acactl trace`'s reading of ``ofproto/trace`` output (as OVS 3.1 prints it): steps across
conntrack recirculations, each named by table and owner, and the verdict."""

from __future__ import annotations

from agent.cli.trace import annotate, describe, parse_steps, verdict

PORT_A, PORT_B, RULES_B = 0xA020001634C2059B, 0xA0900084CDA510D7, 0xA090009232AE96F7
INFO = {
    "cookies": {f"{PORT_A:#x}": "port:port-a", f"{PORT_B:#x}": "security:port:port-b"},
    "ports": [{"id": "port-a", "ofport": 4}, {"id": "port-b", "ofport": 5}],
    "neighbours": [],
    "tunnel_ofport": 1,
    "dhcp_ofport": 2,
    "route_ofport": 3,
}

# A TCP packet into a port whose groups allow no such ingress: two recirculations (conntrack).
SG_DROP = f"""Flow: tcp,in_port=4,vlan_tci=0x0000,dl_src=fa:16:3e:00:00:0a,dl_dst=fa:16:3e:00:00:0b

bridge("br-int")
----------------
 0. in_port=4, priority 100, cookie {PORT_A:#x}
    set_field:0x1f4->reg0
    goto_table:10
40. ip,reg0=0x1f4,dl_dst=fa:16:3e:00:00:0b, priority 101, cookie {PORT_B:#x}
    set_field:0x5->reg3
    ct(table=45,zone=5)
    drop
     -> A clone of the packet is forked to recirculate. The forked pipeline will be resumed at table 45.

Final flow: unchanged
Megaflow: recirc_id=0,eth,tcp,in_port=4,nw_frag=no
Datapath actions: ct(zone=5),recirc(0x6)

===============================================================================
recirc(0x6) - resume conntrack with default ct_state=trk|new (use --ct-next to customize)
===============================================================================

Flow: recirc_id=0x6,ct_state=new|trk,ct_zone=5,eth,tcp,reg0=0x1f4,reg3=0x5,in_port=4

bridge("br-int")
----------------
    thaw
        Resuming from table 45
45. reg3=0x5, priority 1, cookie {PORT_B:#x}
    drop

Final flow: unchanged
Megaflow: recirc_id=0x6,eth,tcp,in_port=4,nw_frag=no
Datapath actions: drop
"""

TUNNEL = f"""bridge("br-int")
----------------
 0. in_port=4, priority 100, cookie {PORT_A:#x}
    goto_table:40
40. reg0=0x66,dl_dst=fa:16:3e:00:00:0b, priority 90, cookie 0xa030005c5db6aecd
    set_field:0x66->tun_id
    set_field:172.31.0.12->tun_dst
    output:1
     -> output to native tunnel
bridge("br-phy")
----------------
 0. priority 0
    NORMAL
Final flow: unchanged
"""


def test_steps_across_recirculations_with_tables_and_owners() -> None:
    steps = parse_steps(SG_DROP, "br-int")
    annotate(steps, INFO)
    assert [(s.table_name, s.owner, s.priority) for s in steps] == [
        ("CLASSIFY", "port:port-a", 100),
        ("L2_LOOKUP", "security:port:port-b", 101),
        ("SG_INGRESS_RULES", "security:port:port-b", 1),
    ]
    assert steps[1].actions == ["set_field:0x5->reg3", "ct(table=45,zone=5)"]  # its "drop" is no drop
    assert verdict(steps, INFO) == {
        "verdict": "drop",
        "table": "SG_INGRESS_RULES",
        "owner": "security:port:port-b",
        "reason": "security group: no ingress rule allows it",
    }


def test_tunnel_verdict_names_the_remote_host_and_other_bridges_are_left_out() -> None:
    steps = parse_steps(TUNNEL, "br-int")
    annotate(steps, INFO)
    assert [s.table for s in steps] == [0, 40]
    assert steps[1].owner == "neighbor:?"  # a cookie the agent does not name: its kind
    result = verdict(steps, INFO)
    assert result["outputs"] == [{"to": "tunnel", "remote_host": "172.31.0.12", "owner": "neighbor:?"}]
    assert describe(result) == "OUTPUT: tunnel to host 172.31.0.12, by neighbor:?"


def test_no_match_is_a_drop_in_that_table() -> None:
    steps = parse_steps('bridge("br-int")\n----------------\n 0. No match.\n    drop\n', "br-int")
    annotate(steps, INFO)
    result = verdict(steps, INFO)
    assert result["verdict"] == "drop" and result["reason"] == "no flow matches in CLASSIFY"
    assert steps[0].owner == "(no flow)"
