"""OpenFlow flows as immutable values.

A flow's identity is its key ``(table, priority, match)``; its value is
``(actions, goto, cookie, timeouts)``. Flow sets are dicts from key to flow, so the
reconciler diffs them with set operations and tests compare canonical text. Nothing
here knows the wire format: ``agent.dataplane.openflow.codec`` encodes these values.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import operator
import socket
from dataclasses import dataclass
from typing import NamedTuple


class Field(enum.Enum):
    """Match/set-field fields: value = (ovs-ofctl name, width in bits); order = canonical match order."""

    IN_PORT = ("in_port", 32)
    REG0 = ("reg0", 32)
    REG1 = ("reg1", 32)
    REG2 = ("reg2", 32)
    REG3 = ("reg3", 32)
    REG4 = ("reg4", 32)
    REG5 = ("reg5", 32)
    REG6 = ("reg6", 32)
    REG7 = ("reg7", 32)
    METADATA = ("metadata", 64)
    ETH_DST = ("dl_dst", 48)
    ETH_SRC = ("dl_src", 48)
    VLAN_VID = ("vlan_vid", 16)  # OpenFlow 1.3+ form: the VID | OFPVID_PRESENT (0x1000)
    ETH_TYPE = ("dl_type", 16)
    IP_PROTO = ("nw_proto", 8)
    IPV4_SRC = ("nw_src", 32)
    IPV4_DST = ("nw_dst", 32)
    TCP_SRC = ("tcp_src", 16)
    TCP_DST = ("tcp_dst", 16)
    UDP_SRC = ("udp_src", 16)
    UDP_DST = ("udp_dst", 16)
    ICMP_TYPE = ("icmp_type", 8)
    ICMP_CODE = ("icmp_code", 8)
    ARP_OP = ("arp_op", 16)
    ARP_SPA = ("arp_spa", 32)
    ARP_TPA = ("arp_tpa", 32)
    ARP_SHA = ("arp_sha", 48)
    ARP_THA = ("arp_tha", 48)
    TUNNEL_ID = ("tun_id", 64)
    TUN_IPV4_SRC = ("tun_src", 32)
    TUN_IPV4_DST = ("tun_dst", 32)
    IP_TTL = ("nw_ttl", 8)
    CT_STATE = ("ct_state", 32)  # conntrack state bits (CT_* below), after a ct() lookup
    CONJ_ID = ("conj_id", 32)  # the conjunction a packet completed (see Conjunction)
    CT_MARK = ("ct_mark", 32)  # the mark committed with the packet's connection (Ct.mark)
    CT_LABEL = ("ct_label", 128)  # the label committed with it (Ct.label: a register's 32 bits)

    # Members are singletons: identity hashing is exact and, unlike Enum's, runs in C. Flow keys
    # are hashed on every dict access of the reconciler, so this matters at 100k flows.
    __hash__ = object.__hash__

    @property
    def ofctl_name(self) -> str:
        return self.value[0]

    @property
    def width(self) -> int:
        return self.value[1]


_FIELD_ORDER = {f: i for i, f in enumerate(Field)}
_MAC_FIELDS = frozenset({Field.ETH_DST, Field.ETH_SRC, Field.ARP_SHA, Field.ARP_THA})
_IP_FIELDS = frozenset(
    {Field.IPV4_SRC, Field.IPV4_DST, Field.ARP_SPA, Field.ARP_TPA, Field.TUN_IPV4_SRC, Field.TUN_IPV4_DST}
)

# Reserved OpenFlow port numbers used by the planner.
OFPVID_PRESENT = 0x1000  # VLAN_VID values of tagged frames carry this bit
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_TABLE = 0xFFFFFFF9  # in a packet-out: run the packet through the flow tables from table 0
OFPP_CONTROLLER = 0xFFFFFFFD
_PORT_NAMES = {OFPP_IN_PORT: "IN_PORT", OFPP_TABLE: "TABLE", OFPP_CONTROLLER: "CONTROLLER"}

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_IPV6 = 0x86DD
IP_PROTO_ICMP = 1
IP_PROTO_TCP = 6
IP_PROTO_UDP = 17
ARP_REQUEST = 1
ARP_REPLY = 2

# ct_state bits (ovs-fields(7)).
CT_NEW = 0x01
CT_EST = 0x02
CT_REL = 0x04
CT_RPL = 0x08
CT_INV = 0x10
CT_TRK = 0x20
_CT_FLAG_NAMES = (
    (CT_NEW, "new"), (CT_EST, "est"), (CT_REL, "rel"), (CT_RPL, "rpl"), (CT_INV, "inv"), (CT_TRK, "trk"),
)  # fmt: skip


def ct_state(on: int = 0, off: int = 0) -> MatchField:
    """Match the ct_state bits in ``on`` set and those in ``off`` clear (e.g. +trk-rpl)."""
    return MatchField(Field.CT_STATE, on, on | off)


def _ct_state_text(value: int, mask: int | None) -> str:
    """ovs-ofctl's own form: +trk-rpl (ovs-ofctl reads it back)."""
    mask = 0xFFFFFFFF if mask is None else mask
    return "".join(("+" if value & bit else "-") + name for bit, name in _CT_FLAG_NAMES if mask & bit)


def mac_to_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def int_to_mac(value: int) -> str:
    raw = f"{value:012x}"
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


def ip_to_int(ip: str) -> int:
    return int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")


def format_value(fld: Field, value: int) -> str:
    if fld in _MAC_FIELDS:
        return int_to_mac(value)
    if fld in _IP_FIELDS:
        return str(ipaddress.IPv4Address(value))
    if fld is Field.IN_PORT:
        return _PORT_NAMES.get(value, str(value))
    if fld in (Field.ETH_TYPE, Field.TUNNEL_ID, Field.METADATA, Field.VLAN_VID) or fld.name.startswith("REG"):
        return hex(value)
    return str(value)


class MatchField(NamedTuple):
    """One matched field; a tuple so keys hash and compare in C."""

    field: Field
    value: int
    mask: int | None = None

    def text(self) -> str:
        if self.field is Field.CT_STATE:
            return f"ct_state={_ct_state_text(self.value, self.mask)}"
        val = format_value(self.field, self.value)
        if self.mask is None:
            return f"{self.field.ofctl_name}={val}"
        if self.field in _IP_FIELDS:
            prefix = bin(self.mask).count("1")
            return f"{self.field.ofctl_name}={val}/{prefix}"
        return f"{self.field.ofctl_name}={val}/{format_value(self.field, self.mask)}"


Match = tuple[MatchField, ...]


def match(*fields: MatchField | tuple[Field, int] | tuple[Field, int, int]) -> Match:
    """Canonical match: one entry per field, sorted by field order (so equal matches are equal keys).

    A field with an all-zero mask (a /0 prefix) matches anything: OVS drops it, so it is left
    out here too, or the flow would never equal its dump and be rewritten at every resync."""
    items = [f if isinstance(f, MatchField) else MatchField(*f) for f in fields]
    items = [f for f in items if f.mask != 0]
    items.sort(key=lambda m: _FIELD_ORDER[m.field])
    for a, b in itertools.pairwise(items):
        if a.field is b.field:
            raise ValueError(f"field {a.field.ofctl_name} given twice in one match")
    return tuple(items)


def cidr_match(fld: Field, cidr: str) -> MatchField:
    net = ipaddress.IPv4Network(cidr, strict=False)
    if net.prefixlen == 32:
        return MatchField(fld, int(net.network_address))
    return MatchField(fld, int(net.network_address), int(net.netmask))


# ------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Output:
    port: int

    def text(self) -> str:
        return f"output:{_PORT_NAMES.get(self.port, self.port)}"


@dataclass(frozen=True, slots=True)
class SetField:
    field: Field
    value: int

    def text(self) -> str:
        return f"set_field:{format_value(self.field, self.value)}->{self.field.ofctl_name}"


@dataclass(frozen=True, slots=True)
class Move:
    """Copy ``n_bits`` from ``src[src_ofs:]`` to ``dst[dst_ofs:]`` (Nicira reg_move)."""

    src: Field
    dst: Field
    n_bits: int
    src_ofs: int = 0
    dst_ofs: int = 0

    def text(self) -> str:
        s_end = self.src_ofs + self.n_bits - 1
        d_end = self.dst_ofs + self.n_bits - 1
        return (
            f"move:{self.src.ofctl_name}[{self.src_ofs}..{s_end}]"
            f"->{self.dst.ofctl_name}[{self.dst_ofs}..{d_end}]"
        )


@dataclass(frozen=True, slots=True)
class DecTtl:
    def text(self) -> str:
        return "dec_ttl"


@dataclass(frozen=True, slots=True)
class PopVlan:
    """Remove the outermost 802.1Q tag."""

    def text(self) -> str:
        return "pop_vlan"


@dataclass(frozen=True, slots=True)
class Controller:
    """Send to the agent as a packet-in; ``userdata`` tells the agent why."""

    max_len: int = 0xFFFF
    userdata: bytes = b""

    def text(self) -> str:
        if self.userdata:
            return f"controller(max_len={self.max_len},userdata={self.userdata.hex()})"
        return f"controller(max_len={self.max_len})"


@dataclass(frozen=True, slots=True)
class Ct:
    """Send the packet through conntrack in ``zone`` (Nicira ct): with ``table``, it continues
    there with ct_state set (recirculated); ``commit`` stores its connection, with ``mark``
    as its ct_mark and the 32 bits of register ``label`` as its ct_label when given."""

    zone: int
    table: int | None = None
    commit: bool = False
    mark: int | None = None  # with commit: the connection's ct_mark becomes this
    label: Field | None = None  # with commit: ct_label[0..31] becomes this register's value

    def nested(self) -> tuple[SetField | Move, ...]:
        """The actions run on the committed connection (ct's ``exec``)."""
        out: tuple[SetField | Move, ...] = ()
        if self.mark is not None:
            out += (SetField(Field.CT_MARK, self.mark),)
        if self.label is not None:
            out += (Move(self.label, Field.CT_LABEL, 32),)
        return out

    def text(self) -> str:
        parts = ["commit"] if self.commit else []
        parts.append(f"zone={self.zone}")
        if self.table is not None:
            parts.append(f"table={self.table}")
        if self.nested():
            parts.append(f"exec({','.join(a.text() for a in self.nested())})")
        return f"ct({','.join(parts)})"


@dataclass(frozen=True, slots=True)
class Conjunction:
    """Clause ``clause`` (1-based) of ``n_clauses`` of conjunctive match ``id``: once a packet
    matched one flow of every clause (same table, same priority), the flow matching
    ``conj_id=id`` applies."""

    id: int
    clause: int
    n_clauses: int

    def text(self) -> str:
        return f"conjunction({self.id},{self.clause}/{self.n_clauses})"


Action = Output | SetField | Move | DecTtl | PopVlan | Controller | Ct | Conjunction


# ------------------------------------------------------------------ flows

FlowKey = tuple[int, int, Match]


class Flow:
    """One flow; immutable by convention. A hand-written slotted class rather than a frozen
    dataclass: the planner builds tens of thousands per goal state and frozen-dataclass
    construction (object.__setattr__ per field) was the largest planning cost."""

    __slots__ = (
        "actions",
        "cookie",
        "goto",
        "hard_timeout",
        "idle_timeout",
        "key",
        "match",
        "priority",
        "table",
    )

    def __init__(
        self,
        table: int,
        priority: int,
        match: Match,
        actions: tuple[Action, ...] = (),
        goto: int | None = None,
        cookie: int = 0,
        idle_timeout: int = 0,
        hard_timeout: int = 0,
    ) -> None:
        self.table = table
        self.priority = priority
        self.match = match
        self.actions = actions
        self.goto = goto
        self.cookie = cookie
        self.idle_timeout = idle_timeout
        self.hard_timeout = hard_timeout
        self.key: FlowKey = (table, priority, match)

    def _value(self) -> tuple:
        return (self.key, self.actions, self.goto, self.cookie, self.idle_timeout, self.hard_timeout)

    def __eq__(self, other: object) -> bool:
        # Planners hand back cached flows (security groups): the same object is equal at once.
        return self is other or (isinstance(other, Flow) and self._value() == other._value())

    def __hash__(self) -> int:
        return hash(self._value())

    def __repr__(self) -> str:
        return f"Flow({self.text()!r}, cookie={self.cookie:#x})"

    def text(self, table_names: dict[int, str] | None = None) -> str:
        """Canonical one-line text, ovs-ofctl-like, with table names when given."""
        names = table_names or {}
        parts = [f"table={names.get(self.table, self.table)}", f"priority={self.priority}"]
        parts.extend(m.text() for m in self.match)
        if self.idle_timeout:
            parts.append(f"idle_timeout={self.idle_timeout}")
        if self.hard_timeout:
            parts.append(f"hard_timeout={self.hard_timeout}")
        acts = [a.text() for a in self.actions]
        if self.goto is not None:
            acts.append(f"goto_table:{names.get(self.goto, self.goto)}")
        return f"{', '.join(parts)} actions={','.join(acts) or 'drop'}"


FlowSet = dict[FlowKey, Flow]


_KEY = operator.attrgetter("key")


def flow_set(flows: list[Flow] | tuple[Flow, ...]) -> FlowSet:
    """By key (a later flow with the same key wins). Built in C: one call per owner, and a
    restart's resync makes ~50k of them."""
    return dict(zip(map(_KEY, flows), flows, strict=True))
