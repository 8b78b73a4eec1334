"""OpenFlow 1.4 codec: byte layouts hand-computed from the spec, and decode/encode round trips."""

from __future__ import annotations

import struct

import pytest

from agent.dataplane.openflow import codec
from agent.dataplane.openflow.codec import BundleCtrl, FlowModCommand, RawOxm
from agent.planner.flows import (
    OFPP_CONTROLLER,
    OFPVID_PRESENT,
    Conjunction,
    Controller,
    Ct,
    DecTtl,
    Field,
    Flow,
    MatchField,
    Move,
    Output,
    PopVlan,
    SetField,
    cidr_match,
    ip_to_int,
    match,
)

SIMPLE = Flow(
    table=3,
    priority=0x100,
    match=match((Field.IN_PORT, 1), (Field.REG0, 5, 0xFF)),
    actions=(Output(2),),
    goto=4,
    cookie=0x10,
)
# cookie, cookie_mask, table, command, idle, hard, priority, buffer, out_port, out_group, flags, importance
SIMPLE_FIXED = "0000000000000010 0000000000000000 03 00 0000 0000 0100 ffffffff ffffffff ffffffff 0000 0000"
SIMPLE_MATCH = "0001001880000004 0000000100010108 00000005 000000ff"
SIMPLE_INSTRUCTIONS = "0004001800000000000000100000000200000000000000000001000804000000"


def h(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


def test_hello_has_version_bitmap_for_1_4_only() -> None:
    assert codec.encode_hello(7) == h("05 00 0010 00000007  0001 0008 00000020")
    assert codec.decode_hello_versions(codec.encode_hello(7)) == {5}
    # A header-only hello offers every version up to its own.
    assert codec.decode_hello_versions(h("04 00 0008 00000001")) == {1, 2, 3, 4}


def test_session_messages() -> None:
    assert codec.encode_header_only(codec.MsgType.BARRIER_REQUEST, 9) == h("05 14 0008 00000009")
    assert codec.encode_echo(3, b"ab", reply=True) == h("05 03 000a 00000003 6162")
    assert codec.encode_set_config(2) == h("05 09 000c 00000002 0000 ffff")
    assert codec.encode_set_packet_in_format(4) == h("05 04 0014 00000004 00002320 00000010 00000002")
    features = h("05 06 0020 00000001 0000aabbccddeeff 00000000 fe 00 0000 00000047 00000000")
    assert codec.decode_features_reply(features) == 0xAABBCCDDEEFF


def test_flow_mod_add_layout() -> None:
    msg = codec.encode_flow_mod(SIMPLE, FlowModCommand.ADD, 0x11)
    assert msg == h("05 0e 0068 00000011" + SIMPLE_FIXED + SIMPLE_MATCH + SIMPLE_INSTRUCTIONS)


def test_flow_mod_delete_strict_has_no_instructions() -> None:
    msg = codec.encode_flow_mod(SIMPLE, FlowModCommand.DELETE_STRICT, 0x12)
    fixed = SIMPLE_FIXED.replace(" 03 00 ", " 03 04 ")
    assert msg == h("05 0e 0048 00000012" + fixed + SIMPLE_MATCH)


def test_bundle_add_wraps_flow_mod_with_same_xid() -> None:
    msg = codec.encode_bundle_add(
        0x77, codec.OFPBF_ATOMIC | codec.OFPBF_ORDERED, SIMPLE, FlowModCommand.ADD, 5
    )
    inner = codec.encode_flow_mod(SIMPLE, FlowModCommand.ADD, 5)
    assert msg == h("05 22 0078 00000005 00000077 0000 0003") + inner


def test_bundle_control_layout_and_decode() -> None:
    msg = codec.encode_bundle_control(0x77, BundleCtrl.COMMIT_REQUEST, 3, 8)
    assert msg == h("05 21 0010 00000008 00000077 0004 0003")
    reply = codec.decode_bundle_control(h("05 21 0010 00000008 00000077 0005 0003"))
    assert reply == codec.BundleReply(0x77, BundleCtrl.COMMIT_REPLY, 3)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (Output(7), "0000 0010 00000007 0000 000000000000"),
        (Output(OFPP_CONTROLLER), "0000 0010 fffffffd ffff 000000000000"),
        (Controller(max_len=128), "0000 0010 fffffffd 0080 000000000000"),
        (DecTtl(), "0018 0008 00000000"),
        (SetField(Field.TUN_IPV4_DST, ip_to_int("1.2.3.4")), "0019 0010 00014004 01020304 00000000"),
        (SetField(Field.ETH_DST, 0x112233445566), "0019 0010 80000606 112233445566 0000"),
        (SetField(Field.TUNNEL_ID, 5), "0019 0010 80004c08 0000000000000005"),
        (Move(Field.REG0, Field.REG1, 8, 0, 8), "ffff 0018 00002320 0006 0008 0000 0008 00010004 00010204"),
        # OVS dumps REG_MOVE fields in NXM form (NXM_OF_ETH_SRC, NXM_NX_TUN_ID): encoded the same way.
        (Move(Field.ETH_SRC, Field.ETH_DST, 48), "ffff 0018 00002320 0006 0030 0000 0000 00000406 00000206"),
        (Move(Field.TUNNEL_ID, Field.REG0, 24), "ffff 0018 00002320 0006 0018 0000 0000 00012008 00010004"),
        (Move(Field.ARP_SPA, Field.ARP_TPA, 32), "ffff 0018 00002320 0006 0020 0000 0000 00002004 00002204"),
        (
            Controller(userdata=b"\x01\x02\x03"),
            "ffff 0018 00002320 0025 000000000000  0003 0007 010203 00",
        ),
        (
            Controller(max_len=64, userdata=b"abcd"),
            "ffff 0020 00002320 0025 000000000000  0000 0008 0040 0000  0003 0008 61626364",
        ),
        # NXAST_CT: flags, zone_src 0 (immediate), zone, recirculation table (ff: none), pad, alg
        # (what `ovs-ofctl ofp-print` reads as ct(table=13,zone=5) and ct(commit,zone=5)).
        (Ct(5, table=13), "ffff 0018 00002320 0023 0000 00000000 0005 0d 000000 0000"),
        (Ct(5, commit=True), "ffff 0018 00002320 0023 0001 00000000 0005 ff 000000 0000"),
        # ... with a nested set_field of ct_mark (ct(commit,zone=5,exec(set_field:0x1->ct_mark))).
        (
            Ct(5, commit=True, mark=1),
            "ffff 0028 00002320 0023 0001 00000000 0005 ff 000000 0000  0019 0010 0001d604 00000001 00000000",
        ),
        # NXAST_CONJUNCTION: clause 0-based on the wire, n_clauses, id.
        (Conjunction(1234, 2, 2), "ffff 0010 00002320 0022 01 02 000004d2"),
    ],
)
def test_action_layouts(action: object, expected: str) -> None:
    assert codec.encode_action(action) == h(expected)  # type: ignore[arg-type]


def test_oxm_headers_for_basic_and_nicira_classes() -> None:
    assert codec.oxm_header(Field.IN_PORT) == 0x80000004
    assert codec.oxm_header(Field.METADATA, masked=True) == 0x80000510
    assert codec.oxm_header(Field.TUNNEL_ID) == 0x80004C08
    assert codec.oxm_header(Field.ARP_OP) == 0x80002A02
    assert codec.oxm_header(Field.REG7) == 0x00010E04
    assert codec.oxm_header(Field.TUN_IPV4_SRC) == 0x00013E04
    assert codec.oxm_header(Field.IP_TTL) == 0x00013A01
    assert codec.oxm_header(Field.CT_STATE, masked=True) == 0x0001D308  # NXM_NX_CT_STATE_W
    assert codec.oxm_header(Field.CONJ_ID) == 0x00014A04  # NXM_NX_CONJ_ID
    assert codec.oxm_header(Field.CT_MARK) == 0x0001D604  # NXM_NX_CT_MARK


def _all_fields_match() -> tuple[MatchField, ...]:
    fields = []
    for i, fld in enumerate(Field):
        value = (0x0102030405060708 + i) & ((1 << fld.width) - 1)
        mask = None if i % 2 else ((1 << fld.width) - 1) ^ 0xF
        fields.append(MatchField(fld, value & mask if mask is not None else value, mask))
    return match(*fields)


def test_match_round_trip_covers_every_field() -> None:
    fields = _all_fields_match()
    encoded = codec.encode_match(fields)
    assert len(encoded) % 8 == 0
    decoded, end = codec.decode_match(encoded)
    assert decoded == fields
    assert end == len(encoded)


def test_decode_normalises_full_mask_and_sorts_like_the_planner() -> None:
    tlvs = codec.encode_oxm(MatchField(Field.REG1, 9)) + codec.encode_oxm(MatchField(Field.IN_PORT, 3))
    full_mask = struct.pack("!I", codec.oxm_header(Field.IPV4_DST, masked=True)) + h("0a000001 ffffffff")
    assert codec.decode_oxms(tlvs + full_mask) == match(
        (Field.IN_PORT, 3), (Field.REG1, 9), cidr_match(Field.IPV4_DST, "10.0.0.1/32")
    )


def test_unknown_oxm_kept_raw_so_the_key_differs() -> None:
    ip_dscp = h("80001001 2e")
    known = codec.encode_oxm(MatchField(Field.ETH_TYPE, 0x800))
    decoded = codec.decode_oxms(known + ip_dscp)
    assert decoded == (MatchField(Field.ETH_TYPE, 0x800), RawOxm(ip_dscp))
    assert decoded != match((Field.ETH_TYPE, 0x800))
    # A raw TLV re-encodes verbatim, so a foreign flow can still be deleted by its key.
    assert codec.encode_match(decoded)[4 : 4 + len(known + ip_dscp)] == known + ip_dscp


def test_a_tlv_cut_short_by_the_match_end_stays_raw_and_the_instructions_intact() -> None:
    """A TLV whose length runs past its match is kept raw up to the match's end; the bytes after
    the match (the instructions in a flow stats entry) are never read as part of it."""
    known = codec.encode_oxm(MatchField(Field.ETH_TYPE, 0x800))
    cut = h("80001804 0a00")  # IPV4_DST claims 4 bytes, the match ends after 2
    body = known + cut
    ofp_match = struct.pack("!HH", 1, 4 + len(body)) + body + bytes(-(4 + len(body)) % 8)
    trailer = codec.encode_instructions(SIMPLE)
    decoded, end = codec.decode_match(ofp_match + trailer)
    assert decoded == (MatchField(Field.ETH_TYPE, 0x800), RawOxm(cut))
    assert end == len(ofp_match)


def test_vlan_vid_match_and_pop_vlan_encode_as_openflow_1_4() -> None:
    tlv = codec.encode_oxm(MatchField(Field.VLAN_VID, OFPVID_PRESENT | 5))
    assert tlv == h("80000c02 1005")  # OXM_OF_VLAN_VID, the VID with OFPVID_PRESENT
    assert codec.decode_oxms(tlv) == (MatchField(Field.VLAN_VID, 0x1005),)
    assert codec.encode_action(PopVlan()) == h("0012 0008 00000000")  # OFPAT_POP_VLAN
    flow = Flow(0, 100, match((Field.IN_PORT, 3), (Field.VLAN_VID, 0x1005)), (PopVlan(),), goto=40)
    assert flow.text() == "table=0, priority=100, in_port=3, vlan_vid=0x1005 actions=pop_vlan,goto_table:40"


def test_flow_delete_by_cookie_is_a_non_strict_delete_with_the_mask() -> None:
    msg = codec.encode_flow_delete(9, 0xA080000000000001, 0xFFF00000000000FF, 35)
    version, msg_type, length, xid = codec.parse_header(msg)
    assert (version, msg_type, length, xid) == (5, codec.MsgType.FLOW_MOD, len(msg), 9)
    cookie, mask, table, command = struct.unpack_from("!QQBB", msg, 8)
    assert (cookie, mask, table, command) == (0xA080000000000001, 0xFFF00000000000FF, 35, 3)
    assert msg[48:] == codec.encode_match(())


def _flow_stats_entry(flow: Flow, packets: int, nbytes: int) -> bytes:
    body = codec.encode_match(flow.match) + codec.encode_instructions(flow)
    head = struct.pack(
        "!HBxIIHHHHH2xQQQ", 48 + len(body), flow.table, 12, 0, flow.priority,
        flow.idle_timeout, flow.hard_timeout, 0, 0, flow.cookie, packets, nbytes,
    )  # fmt: skip
    return head + body


def test_flow_stats_request_and_reply() -> None:
    req = codec.encode_flow_stats_request(6, cookie=0x42, cookie_mask=0xFF)
    assert req == h(
        "05 12 0038 00000006  0001 0000 00000000"
        "ff 000000 ffffffff ffffffff 00000000 0000000000000042 00000000000000ff"
        "0001 0004 00000000"
    )
    other = Flow(0, 5, match((Field.ETH_TYPE, 0x806)), actions=(DecTtl(),), idle_timeout=30)
    entries = _flow_stats_entry(SIMPLE, 3, 300) + _flow_stats_entry(other, 0, 0)
    reply = h("05 13") + struct.pack("!HI", 16 + len(entries), 6) + h("0001 0001 00000000") + entries
    assert codec.multipart_more(reply)
    flows = codec.decode_flow_stats_reply(reply)
    assert [f.key for f in flows] == [SIMPLE.key, other.key]
    assert flows[0].instructions == codec.encode_instructions(SIMPLE)
    assert (flows[0].cookie, flows[0].packet_count, flows[0].byte_count) == (0x10, 3, 300)
    assert (flows[1].idle_timeout, flows[1].duration_sec) == (30, 12)
    assert flows[1].as_flow().key == other.key


def test_packet_in_1_4() -> None:
    m = codec.encode_match(match((Field.IN_PORT, 4), (Field.TUNNEL_ID, 9)))
    data = b"\xaa" * 20
    body = struct.pack("!IHBBQ", codec.NO_BUFFER, 20, 1, 7, 0xC0) + m + b"\x00\x00" + data
    msg = h("05 0a") + struct.pack("!HI", 8 + len(body), 0) + body
    pin = codec.decode_packet_in(msg)
    assert pin == codec.PacketIn(
        codec.NO_BUFFER, 20, 1, 7, 0xC0, match((Field.IN_PORT, 4), (Field.TUNNEL_ID, 9)), data
    )


def test_packet_in2_carries_userdata() -> None:
    props = (
        h("0000 0009 aabbccddee 00000000000000")  # packet
        + h("0001 0008 00000005")  # full_len
        + h("0003 0005 02 000000")  # table id
        + h("0004 0010 00000000 00000000000000c0")  # cookie, 64-bit value after 4 pad bytes
        + h("0005 0005 01 000000")  # reason
        + h("0006 000c 80000004 00000003 00000000")  # metadata: in_port=3
        + h("0007 0007 776879 00")  # userdata "why"
    )
    msg = h("05 04") + struct.pack("!HI", 16 + len(props), 0) + h("00002320 0000001e") + props
    assert codec.is_packet_in(msg)
    assert not codec.is_packet_in(codec.encode_set_packet_in_format(1))
    pin = codec.decode_packet_in(msg)
    assert pin == codec.PacketIn(
        codec.NO_BUFFER, 5, 1, 2, 0xC0, match((Field.IN_PORT, 3)), h("aabbccddee"), userdata=b"why"
    )


def test_packet_out_layout() -> None:
    msg = codec.encode_packet_out(3, OFPP_CONTROLLER, [Output(1)], b"\x01\x02")
    assert msg == h("05 0d 002a 00000003 ffffffff fffffffd 0010 000000000000") + codec.encode_action(
        Output(1)
    ) + h("0102")


def test_error_decoding_names_type_code_and_failed_request() -> None:
    failed = codec.encode_flow_mod(SIMPLE, FlowModCommand.ADD, 0x99)[:64]
    msg = h("05 01") + struct.pack("!HI", 12 + len(failed), 0x99) + h("0003 0002") + failed
    err = codec.decode_error(msg)
    assert (err.type, err.code, err.xid, err.failed_type) == (3, 2, 0x99, codec.MsgType.FLOW_MOD)
    assert err.text == "OFPET_BAD_INSTRUCTION/BAD_TABLE_ID in FLOW_MOD (xid=0x99)"
    exp = codec.decode_error(h("05 01 0010 00000001 ffff 0007 00002320"))
    assert exp.experimenter == 0x2320
    assert "EXPERIMENTER(0x2320)" in exp.text


def _reply(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return h("05 13") + struct.pack("!HI", 16 + len(body), 6) + h("0001 0000 00000000") + body


def _entry_with_tlvs(flow: Flow, tlvs: bytes) -> bytes:
    """A flow stats entry whose match carries ``tlvs`` in the order given (as a switch sends)."""
    ofp_match = struct.pack("!HH", 1, 4 + len(tlvs)) + tlvs + bytes(-(4 + len(tlvs)) % 8)
    body = ofp_match + codec.encode_instructions(flow)
    head = struct.pack(
        "!HBxIIHHHHH2xQQQ", 48 + len(body), flow.table, 0, 0, flow.priority,
        flow.idle_timeout, flow.hard_timeout, 0, 0, flow.cookie, 0, 0,
    )  # fmt: skip
    return head + body


def test_ovs_match_tlvs_follow_the_order_ovs_dumps_in() -> None:
    """OVS writes registers after the packet fields (seen in OVS 3.x dumps): an ARP answer's
    match comes back as eth_type, arp_op, arp_tpa, reg0; the planner's order has reg0 first."""
    arp = match((Field.REG0, 5000), (Field.ETH_TYPE, 0x806), (Field.ARP_OP, 1), (Field.ARP_TPA, 0x0A000001))
    expected = b"".join(codec.encode_oxm(arp[i]) for i in (1, 2, 3, 0))
    assert codec.ovs_match_tlvs(arp) == expected
    assert codec.ovs_match_tlvs(arp) == expected  # the second time from the remembered shape
    assert codec.decode_oxms(expected) == arp
    assert codec.ovs_match_tlvs(()) == b""
    assert codec.ovs_match_tlvs(match((Field.IN_PORT, 3))) == codec.encode_oxm(MatchField(Field.IN_PORT, 3))


def test_raw_flow_stats_keys_flows_by_the_bytes_the_switch_sent() -> None:
    l2 = Flow(30, 50, match((Field.REG0, 7), (Field.ETH_DST, 0xFA163E000001)), (Output(2),), cookie=0x31)
    skipped = Flow(30, 60, match((Field.REG0, 7)), (Output(3),), cookie=0x80)
    reply = _reply(
        _entry_with_tlvs(l2, codec.ovs_match_tlvs(l2.match)),
        _entry_with_tlvs(skipped, codec.ovs_match_tlvs(skipped.match)),
    )
    raw = codec.raw_flow_stats([reply], keep=lambda cookie: cookie != 0x80)
    assert list(raw) == [(30, 50, codec.ovs_match_tlvs(l2.match))]
    held = raw[(30, 50, codec.ovs_match_tlvs(l2.match))]
    assert (held.cookie, held.idle_timeout, held.instructions) == (0x31, 0, codec.encode_instructions(l2))


def test_dumped_flows_find_by_bytes_and_fall_back_to_decoded_keys() -> None:
    """A flow whose switch order is not the one expected (here: the planner's own order) is
    still found, by its decoded key; nothing is decoded while every flow is found by bytes."""
    from agent.dataplane.host import DumpedFlows

    arp = Flow(20, 100, match((Field.REG0, 9), (Field.ETH_TYPE, 0x806), (Field.ARP_OP, 1)), cookie=0x11)
    l2 = Flow(30, 50, match((Field.REG0, 9), (Field.ETH_DST, 0xFA163E000002)), (Output(2),), cookie=0x12)
    tag = 0xA << 60
    arp, l2 = (Flow(f.table, f.priority, f.match, f.actions, cookie=tag | f.cookie) for f in (arp, l2))
    in_order = DumpedFlows([_reply(_entry_with_tlvs(arp, codec.ovs_match_tlvs(arp.match)))])
    assert in_order.find(arp) is not None and in_order._decoded is None
    assert in_order.find(l2) is None and set(in_order.by_key()) == {arp.key}
    planner_order = b"".join(codec.encode_oxm(m) for m in l2.match)
    other_order = DumpedFlows([_reply(_entry_with_tlvs(l2, planner_order))])
    found = other_order.find(l2)
    assert found is not None and found.instructions == codec.encode_instructions(l2)
    assert len(other_order) == 1
    empty = DumpedFlows([_reply()])
    assert empty.find(l2) is None and len(empty) == 0 and empty.by_key() == {}
