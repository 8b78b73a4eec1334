"""OpenFlow 1.4 (wire version 0x05) encoder/decoder for the planner's flow values.

Pure functions over bytes, no sockets, so the wire format is testable byte by byte. The agent
pushes tens of thousands of flow-mods per resync, so the hot path (``encode_bundle_add``) packs
each message with one precompiled struct and per-field prebuilt header bytes. Encoded values are
not memoised: hashing a frozen dataclass (Python-level ``__hash__``, Enum hash) costs as much as
encoding it, and most values are unique per flow. Decoding does memoise, by TLV bytes.
"""

from __future__ import annotations

import enum
import functools
import operator
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from agent.planner.flows import (
    OFPP_CONTROLLER,
    Action,
    Conjunction,
    Controller,
    Ct,
    DecTtl,
    Field,
    Flow,
    FlowKey,
    MatchField,
    Move,
    Output,
    PopVlan,
    SetField,
)

OFP_VERSION = 0x05
NO_BUFFER = 0xFFFFFFFF
OFPP_ANY = 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
OFPTT_ALL = 0xFF
NX_VENDOR_ID = 0x00002320


class MsgType(enum.IntEnum):
    HELLO = 0
    ERROR = 1
    ECHO_REQUEST = 2
    ECHO_REPLY = 3
    EXPERIMENTER = 4
    FEATURES_REQUEST = 5
    FEATURES_REPLY = 6
    SET_CONFIG = 9
    PACKET_IN = 10
    FLOW_REMOVED = 11
    PORT_STATUS = 12
    PACKET_OUT = 13
    FLOW_MOD = 14
    MULTIPART_REQUEST = 18
    MULTIPART_REPLY = 19
    BARRIER_REQUEST = 20
    BARRIER_REPLY = 21
    BUNDLE_CONTROL = 33
    BUNDLE_ADD_MESSAGE = 34


class FlowModCommand(enum.IntEnum):
    ADD = 0
    DELETE = 3
    DELETE_STRICT = 4


class BundleCtrl(enum.IntEnum):
    OPEN_REQUEST = 0
    OPEN_REPLY = 1
    CLOSE_REQUEST = 2
    CLOSE_REPLY = 3
    COMMIT_REQUEST = 4
    COMMIT_REPLY = 5
    DISCARD_REQUEST = 6
    DISCARD_REPLY = 7


OFPBF_ATOMIC = 1
OFPBF_ORDERED = 2
OFPMP_FLOW_DESC = 1
OFPMPF_REPLY_MORE = 1
OFPHET_VERSIONBITMAP = 1

# Nicira extension messages used to get controller() userdata back in packet-ins.
NXT_SET_PACKET_IN_FORMAT = 16
NXT_PACKET_IN2 = 30
NXPIF_NXT_PACKET_IN2 = 2

_OFPAT_OUTPUT = 0
_OFPAT_POP_VLAN = 18
_OFPAT_DEC_NW_TTL = 24
_OFPAT_SET_FIELD = 25
_OFPAT_EXPERIMENTER = 0xFFFF
_NXAST_REG_MOVE = 6
_NXAST_CONTROLLER2 = 37
_NXAST_CT = 35
_NXAST_CONJUNCTION = 34
_NX_CT_F_COMMIT = 1
_NX_CT_RECIRC_NONE = 0xFF
_NXAC2PT_MAX_LEN = 0
_NXAC2PT_USERDATA = 3
_OFPIT_GOTO_TABLE = 1
_OFPIT_APPLY_ACTIONS = 4
_OFPMT_OXM = 1

_HEADER = struct.Struct("!BBHI")
# ofp_flow_mod up to (excluding) the match: header, cookie, cookie_mask, table_id, command,
# idle/hard timeouts, priority, buffer_id, out_port, out_group, flags, importance.
_FLOW_MOD_FMT = "BBHIQQBBHHHIIIHH"
_FLOW_MOD = struct.Struct("!" + _FLOW_MOD_FMT)
# ofp_bundle_add_msg header (header, bundle_id, pad, flags), the embedded flow_mod, its match header.
_BUNDLE_ADD_FLOW_MOD = struct.Struct("!BBHIIHH" + _FLOW_MOD_FMT + "HH")
_BUNDLE_CTRL = struct.Struct("!BBHIIHH")
_MATCH_HDR = struct.Struct("!HH")
_APPLY_HDR = struct.Struct("!HH4x")
_GOTO = struct.Struct("!HHB3x")
_ACT_OUTPUT = struct.Struct("!HHIH6x")
_ACT_DEC_TTL = struct.Struct("!HH4x")
_ACT_SET_FIELD_HDR = struct.Struct("!HH")
_ACT_REG_MOVE = struct.Struct("!HHIHHHHII")
_ACT_NX_HDR = struct.Struct("!HHIH6x")
# nx_action_conntrack: header, vendor, subtype, flags, zone_src (0: immediate), zone_imm,
# recirc_table, 3 pad, alg; no nested actions.
_ACT_CT = struct.Struct("!HHIHHIHB3xH")
# nx_action_conjunction: header, vendor, subtype, clause (0-based), n_clauses, id.
_ACT_CONJUNCTION = struct.Struct("!HHIHBBI")
_PROP_HDR = struct.Struct("!HH")
_FEATURES_REPLY = struct.Struct("!QIBB2xII")
_MULTIPART_HDR = struct.Struct("!HH4x")
_FLOW_STATS_REQ = struct.Struct("!B3xII4xQQ")
_FLOW_STATS = struct.Struct("!HBxIIHHHHH2xQQQ")
_PACKET_IN = struct.Struct("!IHBBQ")
_PACKET_OUT = struct.Struct("!IIH6x")
_ERROR = struct.Struct("!HH")
_NX_MSG = struct.Struct("!II")
_U32 = struct.Struct("!I")
_PADS = tuple(bytes(n) for n in range(8))


def _pad8(n: int) -> bytes:
    return _PADS[-n % 8]


# ------------------------------------------------------------------ OXM / NXM fields

_OXM_BASIC = 0x8000
_NXM_NX = 0x0001

# Field -> (class, field number); payload width comes from Field.width.
_OXM_IDS: dict[Field, tuple[int, int]] = {
    Field.IN_PORT: (_OXM_BASIC, 0),
    Field.METADATA: (_OXM_BASIC, 2),
    Field.ETH_DST: (_OXM_BASIC, 3),
    Field.ETH_SRC: (_OXM_BASIC, 4),
    Field.VLAN_VID: (_OXM_BASIC, 6),
    Field.ETH_TYPE: (_OXM_BASIC, 5),
    Field.IP_PROTO: (_OXM_BASIC, 10),
    Field.IPV4_SRC: (_OXM_BASIC, 11),
    Field.IPV4_DST: (_OXM_BASIC, 12),
    Field.TCP_SRC: (_OXM_BASIC, 13),
    Field.TCP_DST: (_OXM_BASIC, 14),
    Field.UDP_SRC: (_OXM_BASIC, 15),
    Field.UDP_DST: (_OXM_BASIC, 16),
    Field.ICMP_TYPE: (_OXM_BASIC, 19),
    Field.ICMP_CODE: (_OXM_BASIC, 20),
    Field.ARP_OP: (_OXM_BASIC, 21),
    Field.ARP_SPA: (_OXM_BASIC, 22),
    Field.ARP_TPA: (_OXM_BASIC, 23),
    Field.ARP_SHA: (_OXM_BASIC, 24),
    Field.ARP_THA: (_OXM_BASIC, 25),
    Field.TUNNEL_ID: (_OXM_BASIC, 38),
    Field.TUN_IPV4_SRC: (_NXM_NX, 31),
    Field.TUN_IPV4_DST: (_NXM_NX, 32),
    Field.IP_TTL: (_NXM_NX, 29),
    Field.CT_STATE: (_NXM_NX, 105),
    Field.CONJ_ID: (_NXM_NX, 37),
    Field.CT_MARK: (_NXM_NX, 107),
    Field.CT_LABEL: (_NXM_NX, 108),
    **{getattr(Field, f"REG{i}"): (_NXM_NX, i) for i in range(8)},
}


def oxm_header(fld: Field, masked: bool = False) -> int:
    """32-bit OXM/NXM header: class(16) | field(7) | hasmask(1) | payload length(8)."""
    oxm_class, number = _OXM_IDS[fld]
    size = fld.width // 8
    return (oxm_class << 16) | (number << 9) | (int(masked) << 8) | (size * 2 if masked else size)


# NXAST_REG_MOVE names its fields by NXM header, and OVS dumps every one back in its oldest
# (OpenFlow 1.0 Nicira) form whatever was sent, e.g. eth_src as NXM_OF_ETH_SRC, not OXM_OF_ETH_SRC.
# Moves are encoded that way too, so an unchanged flow compares byte-equal with the dump and a
# resync does not rewrite it. Field -> (class, field number, payload bytes); others keep _OXM_IDS.
_NXM_OF = 0x0000
_NXM_V0_IDS: dict[Field, tuple[int, int, int]] = {
    Field.IN_PORT: (_NXM_OF, 0, 2),
    Field.ETH_DST: (_NXM_OF, 1, 6),
    Field.ETH_SRC: (_NXM_OF, 2, 6),
    Field.ETH_TYPE: (_NXM_OF, 3, 2),
    Field.IP_PROTO: (_NXM_OF, 6, 1),
    Field.IPV4_SRC: (_NXM_OF, 7, 4),
    Field.IPV4_DST: (_NXM_OF, 8, 4),
    Field.TCP_SRC: (_NXM_OF, 9, 2),
    Field.TCP_DST: (_NXM_OF, 10, 2),
    Field.UDP_SRC: (_NXM_OF, 11, 2),
    Field.UDP_DST: (_NXM_OF, 12, 2),
    Field.ICMP_TYPE: (_NXM_OF, 13, 1),
    Field.ICMP_CODE: (_NXM_OF, 14, 1),
    Field.ARP_OP: (_NXM_OF, 15, 2),
    Field.ARP_SPA: (_NXM_OF, 16, 4),
    Field.ARP_TPA: (_NXM_OF, 17, 4),
    Field.TUNNEL_ID: (_NXM_NX, 16, 8),
    Field.ARP_SHA: (_NXM_NX, 17, 6),
    Field.ARP_THA: (_NXM_NX, 18, 6),
}


def nxm_move_header(fld: Field) -> int:
    """The header OVS uses for ``fld`` in NXAST_REG_MOVE (its NXM form where one exists)."""
    if fld not in _NXM_V0_IDS:
        return oxm_header(fld)
    nxm_class, number, size = _NXM_V0_IDS[fld]
    return (nxm_class << 16) | (number << 9) | size


_MOVE_HEADERS = {f._name_: nxm_move_header(f) for f in _OXM_IDS}  # by name: see _OXM_ENC


# Header without hasmask/length bits -> (Field, payload size, planner sort rank, all-ones mask).
_FIELD_INFO = {
    oxm_header(f) & 0xFFFFFE00: (f, f.width // 8, rank, (1 << f.width) - 1)
    for rank, f in enumerate(Field)
    if f in _OXM_IDS
}
_RAW_RANK = len(Field)
_by_rank = operator.itemgetter(0)


@dataclass(frozen=True, slots=True)
class RawOxm:
    """A match TLV the planner has no Field for; keeps foreign flows' keys distinct and deletable."""

    tlv: bytes

    def text(self) -> str:
        return f"oxm({self.tlv.hex()})"


DecodedMatch = tuple[MatchField | RawOxm, ...]


# Field member name -> (exact header, masked header, payload size). Keyed by name because
# Enum.__hash__ is Python-level and this lookup runs once per match field on the hot path.
_OXM_ENC = {
    f._name_: (_U32.pack(oxm_header(f)), _U32.pack(oxm_header(f, True)), f.width // 8) for f in _OXM_IDS
}


def encode_oxm(mf: MatchField | RawOxm) -> bytes:
    """One match TLV (header, value, optional mask); the value is pre-masked as OVS stores it."""
    if type(mf) is RawOxm:
        return mf.tlv
    exact, masked, size = _OXM_ENC[mf.field._name_]
    mask = mf.mask
    if mask is None:
        return exact + mf.value.to_bytes(size, "big")
    return masked + (mf.value & mask).to_bytes(size, "big") + mask.to_bytes(size, "big")


def encode_match(fields: tuple[MatchField | RawOxm, ...]) -> bytes:
    """``ofp_match`` of type OXM, padded to 8 bytes."""
    body = b"".join([encode_oxm(m) for m in fields])
    length = 4 + len(body)
    return _MATCH_HDR.pack(_OFPMT_OXM, length) + body + _pad8(length)


@functools.lru_cache(maxsize=1 << 16)
def _decode_tlv(tlv: bytes) -> tuple[int, MatchField | RawOxm]:
    """(planner sort rank, field) of one TLV; cached because dumps repeat most TLVs verbatim."""
    header = int.from_bytes(tlv[:4], "big")
    info = _FIELD_INFO.get(header & 0xFFFFFE00)
    masked = header & 0x100
    if info is None or len(tlv) - 4 != (2 * info[1] if masked else info[1]):
        return _RAW_RANK, RawOxm(tlv)
    fld, size, rank, full = info
    value = int.from_bytes(tlv[4 : 4 + size], "big")
    mask = int.from_bytes(tlv[4 + size :], "big") if masked else None
    return rank, MatchField(fld, value, None if mask == full else mask)


def _oxms(data: bytes, pos: int, end: int) -> DecodedMatch:
    """The TLVs in ``data[pos:end]`` -> canonical match (planner order); unknown or odd-sized
    TLVs stay raw, last. Slices ``data`` itself: a dump decodes ~4 TLVs per flow."""
    items = []
    while pos + 4 <= end:
        nxt = pos + 4 + data[pos + 3]
        if nxt > end:  # a TLV cut short by the match's end: kept raw, as far as it goes
            nxt = end
        items.append(_decode_tlv(data[pos:nxt]))
        pos = nxt
    items.sort(key=_by_rank)
    return tuple([m for _, m in items])


def decode_oxms(data: bytes | memoryview) -> DecodedMatch:
    """OXM TLVs -> canonical match (planner order); unknown or odd-sized TLVs stay raw, last."""
    return _oxms(bytes(data), 0, len(data))


def decode_match(data: bytes | memoryview, offset: int = 0) -> tuple[DecodedMatch, int]:
    """``ofp_match`` at ``offset`` -> (match, offset just past its padding)."""
    mtype, length = _MATCH_HDR.unpack_from(data, offset)
    if mtype != _OFPMT_OXM:
        raise ValueError(f"unsupported match type {mtype}")
    data = data if type(data) is bytes else bytes(data)
    return _oxms(data, offset + 4, offset + length), offset + length + (-length % 8)


# The order OVS writes match fields in when it reports flows (its nx_put_raw order, seen in
# OVS 3.x dumps), which is not the planner's: a desired flow's TLVs joined in this order equal the
# dumped bytes, so a resync can find ~100k flows by bytes without decoding them. Fields it does
# not list go last; a flow whose bytes come out different is found by its decoded key instead.
_OVS_ORDER = (
    Field.IN_PORT, Field.ETH_SRC, Field.ETH_DST, Field.ETH_TYPE, Field.VLAN_VID,
    Field.IPV4_SRC, Field.IPV4_DST, Field.IP_PROTO, Field.IP_TTL,
    Field.TCP_SRC, Field.TCP_DST, Field.UDP_SRC, Field.UDP_DST, Field.ICMP_TYPE, Field.ICMP_CODE,
    Field.ARP_OP, Field.ARP_SPA, Field.ARP_TPA, Field.ARP_SHA, Field.ARP_THA,
    Field.TUNNEL_ID, Field.TUN_IPV4_SRC, Field.TUN_IPV4_DST,
    *(getattr(Field, f"REG{i}") for i in range(8)), Field.METADATA,
)  # fmt: skip
_OVS_RANK = {f._name_: i for i, f in enumerate(_OVS_ORDER)}  # by name: see _OXM_ENC


def _ovs_rank(mf: MatchField | RawOxm) -> int:
    return len(_OVS_RANK) if type(mf) is RawOxm else _OVS_RANK.get(mf.field._name_, len(_OVS_RANK))


# Match shape (its fields in planner order) -> the positions in OVS's order. The planner makes
# a few dozen shapes, so this stays small; it spares a sort per flow.
_OVS_POSITIONS: dict[tuple[Field, ...], tuple[int, ...]] = {}
_field_of = operator.itemgetter(0)


def ovs_match_tlvs(fields: tuple[MatchField | RawOxm, ...]) -> bytes:
    """A match's TLVs in the order OVS dumps them (no ``ofp_match`` header, no padding)."""
    if len(fields) < 2:
        return encode_oxm(fields[0]) if fields else b""
    try:
        shape = tuple(map(_field_of, fields))
    except TypeError:  # a RawOxm (decoded matches only): no shape to remember
        return b"".join([encode_oxm(m) for m in sorted(fields, key=_ovs_rank)])
    positions = _OVS_POSITIONS.get(shape)
    if positions is None:
        positions = tuple(sorted(range(len(fields)), key=lambda i: _ovs_rank(fields[i])))
        _OVS_POSITIONS[shape] = positions
    return b"".join([encode_oxm(fields[i]) for i in positions])


# ------------------------------------------------------------------ actions and instructions


def _encode_output(action: Output) -> bytes:
    max_len = 0xFFFF if action.port == OFPP_CONTROLLER else 0
    return _ACT_OUTPUT.pack(_OFPAT_OUTPUT, 16, action.port, max_len)


# SetField prefix (action header + OXM header), value size and trailing pad, per field name.
_SET_FIELD_ENC = {
    name: (_ACT_SET_FIELD_HDR.pack(_OFPAT_SET_FIELD, 8 + size + (-size % 8)) + exact, size, _pad8(size))
    for name, (exact, _, size) in _OXM_ENC.items()
}


def _encode_set_field(action: SetField) -> bytes:
    prefix, size, pad = _SET_FIELD_ENC[action.field._name_]
    return prefix + action.value.to_bytes(size, "big") + pad


def _encode_move(action: Move) -> bytes:
    return _ACT_REG_MOVE.pack(
        _OFPAT_EXPERIMENTER, 24, NX_VENDOR_ID, _NXAST_REG_MOVE,
        action.n_bits, action.src_ofs, action.dst_ofs,
        _MOVE_HEADERS[action.src._name_], _MOVE_HEADERS[action.dst._name_],
    )  # fmt: skip


_DEC_TTL = _ACT_DEC_TTL.pack(_OFPAT_DEC_NW_TTL, 8)
_POP_VLAN = _ACT_DEC_TTL.pack(_OFPAT_POP_VLAN, 8)  # the same bare 8-byte action header


def _encode_controller(action: Controller) -> bytes:
    if not action.userdata:
        return _ACT_OUTPUT.pack(_OFPAT_OUTPUT, 16, OFPP_CONTROLLER, action.max_len)
    # NXAST_CONTROLLER2 as OVS re-encodes it on dump: max_len only when not the default, and
    # its property length counting the 2 pad bytes.
    props = []
    if action.max_len != 0xFFFF:
        props.append(_PROP_HDR.pack(_NXAC2PT_MAX_LEN, 8) + action.max_len.to_bytes(2, "big") + _PADS[2])
    ud_len = 4 + len(action.userdata)
    props.append(_PROP_HDR.pack(_NXAC2PT_USERDATA, ud_len) + action.userdata + _pad8(ud_len))
    body = b"".join(props)
    return _ACT_NX_HDR.pack(_OFPAT_EXPERIMENTER, 16 + len(body), NX_VENDOR_ID, _NXAST_CONTROLLER2) + body


def _encode_ct(action: Ct) -> bytes:
    table = _NX_CT_RECIRC_NONE if action.table is None else action.table
    flags = _NX_CT_F_COMMIT if action.commit else 0
    nested = b"".join(encode_action(a) for a in action.nested())
    header = _ACT_CT.pack(
        _OFPAT_EXPERIMENTER, 24 + len(nested), NX_VENDOR_ID, _NXAST_CT, flags, 0, action.zone, table, 0
    )
    return header + nested


def _encode_conjunction(action: Conjunction) -> bytes:
    return _ACT_CONJUNCTION.pack(
        _OFPAT_EXPERIMENTER,
        16,
        NX_VENDOR_ID,
        _NXAST_CONJUNCTION,
        action.clause - 1,
        action.n_clauses,
        action.id,
    )


_ACTION_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    Output: _encode_output,
    SetField: _encode_set_field,
    Move: _encode_move,
    DecTtl: lambda _: _DEC_TTL,
    PopVlan: lambda _: _POP_VLAN,
    Controller: _encode_controller,
    Ct: _encode_ct,
    Conjunction: _encode_conjunction,
}


def encode_action(action: Action) -> bytes:
    """One OpenFlow action; Move and Controller(userdata) are Nicira extensions."""
    try:
        encoder = _ACTION_ENCODERS[type(action)]
    except KeyError:
        raise TypeError(f"unsupported action {action!r}") from None
    return encoder(action)


def encode_actions(actions: tuple[Action, ...] | list[Action]) -> bytes:
    return b"".join([encode_action(a) for a in actions])


_GOTO_BYTES = tuple(_GOTO.pack(_OFPIT_GOTO_TABLE, 8, t) for t in range(256))


# Planners share one action tuple among many flows (every neighbour behind one remote host has
# the same tunnel actions): remember the last encodings by tuple identity. Each entry keeps its
# tuple alive, so an id is never reused while it is here.
_SHARED_ACTIONS: dict[int, tuple[tuple[Action, ...], bytes]] = {}
_SHARED_ACTIONS_MAX = 4096


def encode_instructions(flow: Flow) -> bytes:
    """APPLY_ACTIONS then GOTO_TABLE, as OVS dumps them back (so dumps compare byte-equal)."""
    goto = b"" if flow.goto is None else _GOTO_BYTES[flow.goto]
    actions = flow.actions
    if not actions:
        return goto
    known = _SHARED_ACTIONS.get(id(actions))
    if known is not None and known[0] is actions:
        return known[1] + goto
    try:  # encode_action inlined: this runs for every action of every flow
        acts = b"".join([_ACTION_ENCODERS[type(a)](a) for a in actions])
    except KeyError:
        acts = encode_actions(actions)  # raises, naming what it cannot encode
    apply = _APPLY_HDR.pack(_OFPIT_APPLY_ACTIONS, 8 + len(acts)) + acts
    if len(_SHARED_ACTIONS) >= _SHARED_ACTIONS_MAX:
        _SHARED_ACTIONS.clear()
    _SHARED_ACTIONS[id(actions)] = (actions, apply)
    return apply + goto


# ------------------------------------------------------------------ flow mods and bundles

_T_FLOW_MOD = int(MsgType.FLOW_MOD)
_T_BUNDLE_ADD = int(MsgType.BUNDLE_ADD_MESSAGE)


def encode_flow_mod(flow: Flow, command: FlowModCommand, xid: int) -> bytes:
    """OFPT_FLOW_MOD: ADD (no flow-removed, no buffer) or DELETE_STRICT (any out port/group)."""
    match_bytes = encode_match(flow.match)
    instructions = encode_instructions(flow) if command == FlowModCommand.ADD else b""
    return b"".join(
        (
            _FLOW_MOD.pack(
                OFP_VERSION, _T_FLOW_MOD, 48 + len(match_bytes) + len(instructions), xid,
                flow.cookie, 0, flow.table, command, flow.idle_timeout, flow.hard_timeout,
                flow.priority, NO_BUFFER, OFPP_ANY, OFPG_ANY, 0, 0,
            ),
            match_bytes,
            instructions,
        )
    )  # fmt: skip


def encode_flow_delete(xid: int, cookie: int, cookie_mask: int, table: int = OFPTT_ALL) -> bytes:
    """OFPT_FLOW_MOD DELETE (non-strict, any match) of the flows whose cookie matches under the mask."""
    match_bytes = encode_match(())
    return _FLOW_MOD.pack(
        OFP_VERSION, _T_FLOW_MOD, 48 + len(match_bytes), xid, cookie, cookie_mask, table,
        FlowModCommand.DELETE, 0, 0, 0, NO_BUFFER, OFPP_ANY, OFPG_ANY, 0, 0,
    ) + match_bytes  # fmt: skip


def encode_bundle_add(bundle_id: int, flags: int, flow: Flow, command: FlowModCommand, xid: int) -> bytes:
    """OFPT_BUNDLE_ADD_MESSAGE wrapping a flow_mod (the hot path: one pack, one join).

    OVS requires the embedded message's xid to equal the bundle-add xid.
    """
    oxms = b"".join([encode_oxm(m) for m in flow.match])
    match_len = 4 + len(oxms)
    pad = -match_len % 8
    instructions = encode_instructions(flow) if command == FlowModCommand.ADD else b""
    inner = 48 + match_len + pad + len(instructions)
    return b"".join(
        (
            _BUNDLE_ADD_FLOW_MOD.pack(
                OFP_VERSION, _T_BUNDLE_ADD, 16 + inner, xid, bundle_id, 0, flags,
                OFP_VERSION, _T_FLOW_MOD, inner, xid,
                flow.cookie, 0, flow.table, command, flow.idle_timeout, flow.hard_timeout,
                flow.priority, NO_BUFFER, OFPP_ANY, OFPG_ANY, 0, 0, _OFPMT_OXM, match_len,
            ),
            oxms,
            _PADS[pad],
            instructions,
        )
    )  # fmt: skip


def encode_bundle_control(bundle_id: int, ctrl: BundleCtrl, flags: int, xid: int) -> bytes:
    return _BUNDLE_CTRL.pack(OFP_VERSION, MsgType.BUNDLE_CONTROL, 16, xid, bundle_id, ctrl, flags)


@dataclass(frozen=True, slots=True)
class BundleReply:
    bundle_id: int
    ctrl: BundleCtrl
    flags: int


def decode_bundle_control(msg: bytes) -> BundleReply:
    _, _, _, _, bundle_id, ctrl, flags = _BUNDLE_CTRL.unpack_from(msg)
    return BundleReply(bundle_id, BundleCtrl(ctrl), flags)


# ------------------------------------------------------------------ session messages


def encode_header_only(msg_type: MsgType, xid: int) -> bytes:
    """Body-less requests: features, barrier."""
    return _HEADER.pack(OFP_VERSION, msg_type, 8, xid)


def encode_hello(xid: int, versions: tuple[int, ...] = (OFP_VERSION,)) -> bytes:
    """Hello with a version-bitmap element, so a 1.5-capable switch still settles on 1.4."""
    bitmap = 0
    for v in versions:
        bitmap |= 1 << v
    return _HEADER.pack(OFP_VERSION, MsgType.HELLO, 16, xid) + struct.pack(
        "!HHI", OFPHET_VERSIONBITMAP, 8, bitmap
    )


def decode_hello_versions(msg: bytes) -> set[int]:
    """Versions the peer offers: its bitmap element, else every version up to its header's."""
    version, _, length, _ = _HEADER.unpack_from(msg)
    pos = 8
    while pos + 4 <= length:
        etype, elen = struct.unpack_from("!HH", msg, pos)
        if elen < 4:
            break
        if etype == OFPHET_VERSIONBITMAP:
            versions = set()
            for i, off in enumerate(range(pos + 4, pos + elen, 4)):
                (word,) = _U32.unpack_from(msg, off)
                versions.update(32 * i + b for b in range(32) if word >> b & 1)
            return versions
        pos += elen + (-elen % 8)
    return set(range(1, version + 1))


def encode_echo(xid: int, payload: bytes = b"", reply: bool = False) -> bytes:
    msg_type = MsgType.ECHO_REPLY if reply else MsgType.ECHO_REQUEST
    return _HEADER.pack(OFP_VERSION, msg_type, 8 + len(payload), xid) + payload


def decode_features_reply(msg: bytes) -> int:
    """Datapath id from OFPT_FEATURES_REPLY."""
    dpid, _, _, _, _, _ = _FEATURES_REPLY.unpack_from(msg, 8)
    return dpid


def encode_set_packet_in_format(xid: int, fmt: int = NXPIF_NXT_PACKET_IN2) -> bytes:
    """NXT_SET_PACKET_IN_FORMAT: NXT_PACKET_IN2 is the only format that carries controller userdata."""
    return _HEADER.pack(OFP_VERSION, MsgType.EXPERIMENTER, 20, xid) + struct.pack(
        "!III", NX_VENDOR_ID, NXT_SET_PACKET_IN_FORMAT, fmt
    )


def encode_set_config(xid: int, miss_send_len: int = 0xFFFF) -> bytes:
    """OFPT_SET_CONFIG: OVS sends no async messages (packet-ins) to a service connection until
    its miss_send_len is non-zero."""
    return _HEADER.pack(OFP_VERSION, MsgType.SET_CONFIG, 12, xid) + struct.pack("!HH", 0, miss_send_len)


def parse_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int, int, int]:
    """(version, type, length, xid) of the message at ``offset``."""
    return _HEADER.unpack_from(buf, offset)


# ------------------------------------------------------------------ flow stats


def encode_flow_stats_request(
    xid: int, cookie: int = 0, cookie_mask: int = 0, table: int = OFPTT_ALL
) -> bytes:
    """OFPMP_FLOW_DESC for all flows (optionally one table / one cookie pattern)."""
    body = _FLOW_STATS_REQ.pack(table, OFPP_ANY, OFPG_ANY, cookie, cookie_mask) + encode_match(())
    return (
        _HEADER.pack(OFP_VERSION, MsgType.MULTIPART_REQUEST, 16 + len(body), xid)
        + _MULTIPART_HDR.pack(OFPMP_FLOW_DESC, 0)
        + body
    )


def multipart_more(msg: bytes) -> bool:
    """True when another part of this multipart reply follows."""
    _, flags = _MULTIPART_HDR.unpack_from(msg, 8)
    return bool(flags & OFPMPF_REPLY_MORE)


class DecodedFlow(NamedTuple):
    """A flow as the switch reports it; ``key`` is comparable with the planner's ``Flow.key``.
    A named tuple: a restart's dump builds ~100k of them, and a frozen dataclass's per-field
    ``object.__setattr__`` made that a third of the decoding."""

    table: int
    priority: int
    cookie: int
    match: DecodedMatch
    instructions: bytes
    idle_timeout: int
    hard_timeout: int
    packet_count: int
    byte_count: int
    duration_sec: int

    @property
    def key(self) -> FlowKey:
        return (self.table, self.priority, self.match)  # type: ignore[return-value]

    def as_flow(self) -> Flow:
        """A Flow with this key, e.g. to DELETE_STRICT a stale or foreign flow."""
        return Flow(self.table, self.priority, self.match, cookie=self.cookie)  # type: ignore[arg-type]


def decode_flow_stats_reply(msg: bytes) -> list[DecodedFlow]:
    """One OFPMP_FLOW_DESC reply part -> its flows (a restart's resync decodes ~100k of them)."""
    msg = bytes(msg)
    _, _, length, _ = _HEADER.unpack_from(msg)
    mp_type, _ = _MULTIPART_HDR.unpack_from(msg, 8)
    if mp_type != OFPMP_FLOW_DESC:
        raise ValueError(f"not a flow stats reply (multipart type {mp_type})")
    flows = []
    stats, stats_size, match_hdr = _FLOW_STATS.unpack_from, _FLOW_STATS.size, _MATCH_HDR.unpack_from
    pos = 16
    while pos + stats_size <= length:
        (
            entry_len, table, duration, _nsec, priority, idle, hard, _flags, _importance,
            cookie, packets, nbytes,
        ) = stats(msg, pos)  # fmt: skip
        start = pos + stats_size
        mtype, mlen = match_hdr(msg, start)
        if mtype != _OFPMT_OXM:
            raise ValueError(f"unsupported match type {mtype}")
        end = pos + entry_len
        flows.append(
            DecodedFlow(
                table,
                priority,
                cookie,
                _oxms(msg, start + 4, start + mlen),
                msg[start + mlen + (-mlen % 8) : end],
                idle,
                hard,
                packets,
                nbytes,
                duration,
            )
        )
        pos = end
    return flows


class RawFlow(NamedTuple):
    """A dumped flow's value, its match left as bytes (see ``raw_flow_stats``)."""

    cookie: int
    idle_timeout: int
    hard_timeout: int
    instructions: bytes


RawKey = tuple[int, int, bytes]  # (table, priority, match TLVs as OVS sent them)


def raw_flow_stats(parts: list[bytes], keep: Callable[[int], bool]) -> dict[RawKey, RawFlow]:
    """Flow stats reply parts -> each flow whose cookie ``keep`` accepts, by its raw key: what a
    diff against ``ovs_match_tlvs`` needs, with no match decoded. (A raw key's bytes hash once
    and compare with memcmp; a decoded key is a nested tuple, hashed anew at every lookup.)"""
    out: dict[RawKey, RawFlow] = {}
    stats, stats_size, match_hdr = _FLOW_STATS.unpack_from, _FLOW_STATS.size, _MATCH_HDR.unpack_from
    for msg in parts:
        msg = bytes(msg)
        _, _, length, _ = _HEADER.unpack_from(msg)
        mp_type, _ = _MULTIPART_HDR.unpack_from(msg, 8)
        if mp_type != OFPMP_FLOW_DESC:
            raise ValueError(f"not a flow stats reply (multipart type {mp_type})")
        pos = 16
        while pos + stats_size <= length:
            (entry_len, table, _d, _n, priority, idle, hard, _f, _i, cookie, _p, _b) = stats(msg, pos)
            start = pos + stats_size
            mtype, mlen = match_hdr(msg, start)
            if mtype != _OFPMT_OXM:
                raise ValueError(f"unsupported match type {mtype}")
            end = pos + entry_len
            if keep(cookie):
                out[(table, priority, msg[start + 4 : start + mlen])] = RawFlow(
                    cookie, idle, hard, msg[start + mlen + (-mlen % 8) : end]
                )
            pos = end
    return out


# ------------------------------------------------------------------ packet in / out


@dataclass(frozen=True, slots=True)
class PacketIn:
    buffer_id: int
    total_len: int
    reason: int
    table_id: int
    cookie: int
    match: DecodedMatch
    data: bytes
    userdata: bytes = b""


def _decode_packet_in2(msg: bytes) -> PacketIn:
    """NXT_PACKET_IN2: a property list (OVS pads 64-bit values to offset 8)."""
    _, _, length, _ = _HEADER.unpack_from(msg)
    props: dict[int, bytes] = {}
    pos = 16
    while pos + 4 <= length:
        ptype, plen = _PROP_HDR.unpack_from(msg, pos)
        if plen < 4:
            raise ValueError("bad NXT_PACKET_IN2 property length")
        props[ptype] = msg[pos + 4 : pos + plen]
        pos += plen + (-plen % 8)
    data = props.get(0, b"")
    cookie = props.get(4, bytes(12))[-8:]
    return PacketIn(
        buffer_id=int.from_bytes(props.get(2, b"\xff\xff\xff\xff"), "big"),
        total_len=int.from_bytes(props[1], "big") if 1 in props else len(data),
        reason=props.get(5, b"\x00")[0],
        table_id=props.get(3, b"\x00")[0],
        cookie=int.from_bytes(cookie, "big"),
        match=decode_oxms(props.get(6, b"")),
        data=data,
        userdata=props.get(7, b""),
    )


def is_packet_in(msg: bytes) -> bool:
    """True for OFPT_PACKET_IN and NXT_PACKET_IN2 (what the connection negotiates)."""
    msg_type = msg[1]
    if msg_type == MsgType.EXPERIMENTER:
        return len(msg) >= 16 and _NX_MSG.unpack_from(msg, 8) == (NX_VENDOR_ID, NXT_PACKET_IN2)
    return msg_type == MsgType.PACKET_IN


def decode_packet_in(msg: bytes) -> PacketIn:
    """OFPT_PACKET_IN (1.4) or Nicira NXT_PACKET_IN2 (which also carries controller userdata)."""
    _, msg_type, _, _ = _HEADER.unpack_from(msg)
    if msg_type == MsgType.EXPERIMENTER:
        vendor, subtype = _NX_MSG.unpack_from(msg, 8)
        if vendor != NX_VENDOR_ID or subtype != NXT_PACKET_IN2:
            raise ValueError(f"not a packet-in (experimenter {vendor:#x}/{subtype})")
        return _decode_packet_in2(msg)
    if msg_type != MsgType.PACKET_IN:
        raise ValueError(f"not a packet-in (type {msg_type})")
    buffer_id, total_len, reason, table_id, cookie = _PACKET_IN.unpack_from(msg, 8)
    match, pos = decode_match(msg, 8 + _PACKET_IN.size)
    return PacketIn(buffer_id, total_len, reason, table_id, cookie, match, msg[pos + 2 :])


def encode_packet_out(
    xid: int, in_port: int, actions: tuple[Action, ...] | list[Action], data: bytes
) -> bytes:
    acts = encode_actions(actions)
    length = 8 + _PACKET_OUT.size + len(acts) + len(data)
    return b"".join(
        (
            _HEADER.pack(OFP_VERSION, MsgType.PACKET_OUT, length, xid),
            _PACKET_OUT.pack(NO_BUFFER, in_port, len(acts)),
            acts,
            data,
        )
    )


# ------------------------------------------------------------------ errors

_ERROR_TYPES = {
    0: ("HELLO_FAILED", ("INCOMPATIBLE", "EPERM")),
    1: ("BAD_REQUEST", (
        "BAD_VERSION", "BAD_TYPE", "BAD_MULTIPART", "BAD_EXPERIMENTER", "BAD_EXP_TYPE", "EPERM",
        "BAD_LEN", "BUFFER_EMPTY", "BUFFER_UNKNOWN", "BAD_TABLE_ID", "IS_SLAVE", "BAD_PORT",
        "BAD_PACKET", "MULTIPART_BUFFER_OVERFLOW", "MULTIPART_REQUEST_TIMEOUT", "MULTIPART_REPLY_TIMEOUT",
    )),
    2: ("BAD_ACTION", (
        "BAD_TYPE", "BAD_LEN", "BAD_EXPERIMENTER", "BAD_EXP_TYPE", "BAD_OUT_PORT", "BAD_ARGUMENT",
        "EPERM", "TOO_MANY", "BAD_QUEUE", "BAD_OUT_GROUP", "MATCH_INCONSISTENT", "UNSUPPORTED_ORDER",
        "BAD_TAG", "BAD_SET_TYPE", "BAD_SET_LEN", "BAD_SET_ARGUMENT",
    )),
    3: ("BAD_INSTRUCTION", (
        "UNKNOWN_INST", "UNSUP_INST", "BAD_TABLE_ID", "UNSUP_METADATA", "UNSUP_METADATA_MASK",
        "BAD_EXPERIMENTER", "BAD_EXP_TYPE", "BAD_LEN", "EPERM", "DUP_INST",
    )),
    4: ("BAD_MATCH", (
        "BAD_TYPE", "BAD_LEN", "BAD_TAG", "BAD_DL_ADDR_MASK", "BAD_NW_ADDR_MASK", "BAD_WILDCARDS",
        "BAD_FIELD", "BAD_VALUE", "BAD_MASK", "BAD_PREREQ", "DUP_FIELD", "EPERM",
    )),
    5: ("FLOW_MOD_FAILED", (
        "UNKNOWN", "TABLE_FULL", "BAD_TABLE_ID", "OVERLAP", "EPERM", "BAD_TIMEOUT", "BAD_COMMAND",
        "BAD_FLAGS", "CANT_SYNC", "BAD_PRIORITY", "IS_SYNC",
    )),
    6: ("GROUP_MOD_FAILED", ()),
    7: ("PORT_MOD_FAILED", ()),
    8: ("TABLE_MOD_FAILED", ()),
    9: ("QUEUE_OP_FAILED", ()),
    10: ("SWITCH_CONFIG_FAILED", ()),
    11: ("ROLE_REQUEST_FAILED", ()),
    12: ("METER_MOD_FAILED", ()),
    13: ("TABLE_FEATURES_FAILED", ()),
    14: ("BAD_PROPERTY", ()),
    15: ("ASYNC_CONFIG_FAILED", ()),
    16: ("FLOW_MONITOR_FAILED", ()),
    17: ("BUNDLE_FAILED", (
        "UNKNOWN", "EPERM", "BAD_ID", "BUNDLE_EXIST", "BUNDLE_CLOSED", "OUT_OF_BUNDLES", "BAD_TYPE",
        "BAD_FLAGS", "MSG_BAD_LEN", "MSG_BAD_XID", "MSG_UNSUP", "MSG_CONFLICT", "MSG_TOO_MANY",
        "MSG_FAILED", "TIMEOUT", "BUNDLE_IN_PROGRESS",
    )),
}  # fmt: skip
_OFPET_EXPERIMENTER = 0xFFFF


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A decoded OFPT_ERROR; ``xid`` is the failed request's (OpenFlow echoes it)."""

    type: int
    code: int
    xid: int
    failed_type: int | None
    data: bytes
    experimenter: int | None = None

    @property
    def text(self) -> str:
        if self.experimenter is not None:
            return f"EXPERIMENTER({self.experimenter:#x}) code {self.code}"
        name, codes = _ERROR_TYPES.get(self.type, (f"type {self.type}", ()))
        code = codes[self.code] if self.code < len(codes) else str(self.code)
        failed = f" in {_msg_type_name(self.failed_type)}" if self.failed_type is not None else ""
        return f"OFPET_{name}/{code}{failed} (xid={self.xid:#x})"


def _msg_type_name(msg_type: int) -> str:
    try:
        return MsgType(msg_type).name
    except ValueError:
        return f"type {msg_type}"


def decode_error(msg: bytes) -> ErrorInfo:
    _, _, length, xid = _HEADER.unpack_from(msg)
    err_type, code = _ERROR.unpack_from(msg, 8)
    experimenter = None
    data_start = 12
    if err_type == _OFPET_EXPERIMENTER:
        (experimenter,) = _U32.unpack_from(msg, 12)
        data_start = 16
    data = msg[data_start:length]
    failed_type = data[1] if len(data) >= 8 else None
    return ErrorInfo(err_type, code, xid, failed_type, data, experimenter)
