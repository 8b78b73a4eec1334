"""Security groups enforced through conntrack: pure builders from a port's groups to its flows.

Design and the reasons behind it: ``docs/security-groups.md``. In short: each port with groups
has its own conntrack zone (its ofport); a packet from it is looked up in that zone before its
egress rules, a packet to it before its ingress rules. Every rule is an allow that matches new
and established packets of the original direction (so removing it stops its connections at
the next packet); replies and related packets of tracked connections pass; invalid ones drop;
anything else drops. New connections are committed after a rule allowed them.

Owners (kind ``SECURITY``): ``port:<port id>`` holds a port's own flows (entry, commit,
delivery, default drops); ``rules:<port id>/<group id>`` one group's rules on the port, each
rule's flows with a cookie of their own (the port and the rule id), so a rule change re-plans
that group on its ports only, sends that rule's flows only, and ``acactl dump sg`` counts
packets per rule; ``remote:<group id>`` a remote group's member flows, shared by every rule
naming it (conjunctions). Each group in use has a slot: its plain rules' priority and, as a
remote group, its conjunction's.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.model.resources import Neighbor, Port, SecurityGroup, SecurityGroupRule
from agent.planner import cookies
from agent.planner.cookies import Kind
from agent.planner.flows import (
    CT_EST,
    CT_INV,
    CT_NEW,
    CT_REL,
    CT_RPL,
    CT_TRK,
    ETH_TYPE_IPV4,
    IP_PROTO_ICMP,
    IP_PROTO_TCP,
    IP_PROTO_UDP,
    Conjunction,
    Ct,
    Field,
    Flow,
    FlowKey,
    MatchField,
    Output,
    SetField,
    cidr_match,
    ct_state,
    ip_to_int,
    mac_to_int,
    match,
)
from agent.planner.pipeline import Priority, Reg, Table

INGRESS = 1  # SecurityGroupRule.direction on the wire (EGRESS is 0)
TCP, UDP, ICMP = 0, 1, 2  # the wire's Protocol enum
ICMP_ECHO_REQUEST = 8
_IP_PROTO = {TCP: IP_PROTO_TCP, UDP: IP_PROTO_UDP, ICMP: IP_PROTO_ICMP}
_DST_PORT = {TCP: Field.TCP_DST, UDP: Field.UDP_DST}
_IS_IP = MatchField(Field.ETH_TYPE, ETH_TYPE_IPV4)
BLOCKED = 1  # ct_mark of a connection whose rule went away: its replies drop too
_OPEN = MatchField(Field.CT_MARK, 0, BLOCKED)
_MARKED = MatchField(Field.CT_MARK, BLOCKED, BLOCKED)


PORT_PREFIX = "port:"
RULES_PREFIX = "rules:"
REMOTE_PREFIX = "remote:"


def port_owner(port_id: str) -> tuple[Kind, str]:
    return (Kind.SECURITY, PORT_PREFIX + port_id)


def port_cookie(port_id: str) -> int:
    """The cookie of a port's own flows (entry, commit, delivery, default drop)."""
    return cookies.cookie(Kind.SECURITY, PORT_PREFIX + port_id)


def rule_cookie(port_id: str, rule_id: str) -> int:
    """The cookie of one rule's flows on one port (what per-rule counters are read by)."""
    return cookies.cookie(Kind.SECURITY, f"{port_id}/{rule_id}")


def rule_label(rule_id: str) -> int:
    """The 32-bit label a rule writes into ``Reg.SG_RULE`` and the connections it allows carry
    as their ct_label, so conntrack tells which rule let each one in (never 0: unlabelled)."""
    return zlib.crc32(rule_id.encode()) or 1


def remote_label(group_id: str) -> int:
    """The label of connections a remote group's conjunction allowed: the conjunction is shared
    by every rule naming the group, so these are counted per remote group."""
    return rule_label(REMOTE_PREFIX + group_id)


def port_masks(lo: int, hi: int) -> list[tuple[int, int]]:
    """The range lo..hi as (value, mask) prefixes, fewest first-fit blocks (at most 30 for 16 bits)."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


def _l4_matches(rule: SecurityGroupRule) -> list[tuple[MatchField, ...]]:
    """The protocol part of a rule. TCP (0) with no port range reads as "any protocol": the
    wire cannot tell a rule created without a protocol from TCP-every-port (docs)."""
    lo, hi = rule.port_range_min, rule.port_range_max or rule.port_range_min
    if rule.protocol == TCP and not lo:
        return [()]
    proto = MatchField(Field.IP_PROTO, _IP_PROTO[rule.protocol])
    if rule.protocol == ICMP:  # Neutron's reading: min is the ICMP type, max its code
        fields: tuple[MatchField, ...] = (proto,)
        if rule.port_range_min:
            fields += (MatchField(Field.ICMP_TYPE, rule.port_range_min),)
            if rule.port_range_max:
                fields += (MatchField(Field.ICMP_CODE, rule.port_range_max),)
        return [fields]
    if not lo or (lo, hi) == (1, 65535):
        return [(proto,)]
    dst = _DST_PORT[rule.protocol]
    return [
        (proto, MatchField(dst, value) if mask == 0xFFFF else MatchField(dst, value, mask))
        for value, mask in port_masks(lo, hi)
    ]


@dataclass(frozen=True, slots=True)
class Gateway:
    """A gateway of the port's subnets: echo to it is answered whatever the rules say."""

    ip: str
    mac: str


def base_flows(ck: int) -> list[Flow]:
    """The stage's skeleton: ports without groups skip it; tracked replies and related
    packets pass; invalid ones and anything no rule allowed drop."""
    flows = [
        Flow(Table.SG_EGRESS, Priority.DEFAULT, (), goto=Table.L3_GATEWAY, cookie=ck),
        Flow(Table.SG_EGRESS_COMMIT, Priority.DEFAULT, (), goto=Table.L3_GATEWAY, cookie=ck),
        Flow(Table.SG_INGRESS_COMMIT, Priority.DEFAULT, (), cookie=ck),
    ]
    for rules, commit in (
        (Table.SG_EGRESS_RULES, Table.SG_EGRESS_COMMIT),
        (Table.SG_INGRESS_RULES, Table.SG_INGRESS_COMMIT),
    ):
        flows += [
            Flow(rules, Priority.DEFAULT, (), cookie=ck),
            Flow(rules, Priority.SG_INVALID, match(ct_state(CT_TRK | CT_INV)), cookie=ck),
            Flow(rules, Priority.SG_REPLY, match(ct_state(CT_TRK | CT_RPL), _OPEN), goto=commit, cookie=ck),
            Flow(rules, Priority.SG_REPLY, match(ct_state(CT_TRK | CT_REL), _OPEN), goto=commit, cookie=ck),
        ]
    return flows


def _tables(direction: int) -> tuple[Table, Table, Field]:
    """(rules table, commit table, the field the remote side is matched in) of a direction."""
    if direction == INGRESS:
        return Table.SG_INGRESS_RULES, Table.SG_INGRESS_COMMIT, Field.IPV4_SRC
    return Table.SG_EGRESS_RULES, Table.SG_EGRESS_COMMIT, Field.IPV4_DST


@functools.lru_cache(maxsize=1 << 16)
def rule_flows(
    port_id: str, ofport: int, rule: SecurityGroupRule, slot: int, remote_slot: int | None
) -> tuple[Flow, ...]:
    """One rule's flows on one port, for original-direction packets, new or established: allows
    (a remote prefix, or anyone) at its group's priority (``slot``: the group's), or, for a
    remote group, the port's clause (1/2) of that group's conjunction at the remote group's
    priority (``remote_slot``; None: it has none, the rule allows nothing). Cached: a group
    change re-plans every port using the group, and all but the changed rules come back as the
    same flows."""
    table, goto, remote_field = _tables(rule.direction)
    ck = rule_cookie(port_id, rule.id)
    base = (MatchField(Reg.SG_PORT, ofport), _IS_IP, ct_state(CT_TRK, CT_RPL))
    if rule.remote_group_id:
        if remote_slot is None:
            return ()
        clause = (Conjunction(conj_id(remote_slot), 1, 2),)
        priority = Priority.SG_REMOTE + remote_slot
        return tuple(Flow(table, priority, match(*base, *l4), clause, cookie=ck) for l4 in _l4_matches(rule))
    remote = rule.remote_ip_prefix
    peer = () if not remote or remote == "0.0.0.0/0" else (cidr_match(remote_field, remote),)
    priority = Priority.SG_RULE + slot
    label = (SetField(Reg.SG_RULE, rule_label(rule.id)),)
    return tuple(
        Flow(table, priority, match(*base, *peer, *l4), label, goto=goto, cookie=ck)
        for l4 in _l4_matches(rule)
    )


def conj_id(slot: int) -> int:
    return slot + 1  # conj_id 0 is no conjunction


def remote_owner(group_id: str) -> tuple[Kind, str]:
    return (Kind.SECURITY, REMOTE_PREFIX + group_id)


def rules_owner(port_id: str, group_id: str) -> tuple[Kind, str]:
    return (Kind.SECURITY, f"{RULES_PREFIX}{port_id}/{group_id}")


def remote_flows(group_id: str, slot: int, directions: Iterable[int], addresses: Iterable[str]) -> list[Flow]:
    """A remote group's shared flows, per direction its rules use it in: one clause-2 flow per
    member address and the flow a completed conjunction takes to the commit table. Every port's
    rules naming the group share them: a member joining or leaving changes its own flow only."""
    ck = cookies.cookie(Kind.SECURITY, REMOTE_PREFIX + group_id)
    priority = Priority.SG_REMOTE + slot
    member = (Conjunction(conj_id(slot), 2, 2),)
    flows = []
    for direction in sorted(set(directions)):
        table, goto, remote_field = _tables(direction)
        label = (SetField(Reg.SG_RULE, remote_label(group_id)),)
        flows.append(
            Flow(table, priority, match((Field.CONJ_ID, conj_id(slot))), label, goto=goto, cookie=ck)
        )
        flows += [_member_flow(table, priority, remote_field, a, member, ck) for a in sorted(set(addresses))]
    return flows


@functools.lru_cache(maxsize=1 << 18)
def _member_flow(
    table: Table, priority: int, remote_field: Field, address: str, clause: tuple[Conjunction], ck: int
) -> Flow:
    """One member's clause-2 flow; cached, so a member joining re-plans its group in O(members)
    lookups rather than O(members) flow builds."""
    return Flow(table, priority, match(_IS_IP, cidr_match(remote_field, address)), clause, cookie=ck)


def group_flows(
    port_id: str, ofport: int, vni: int, mac: str, group: SecurityGroup, slots: Mapping[str, int]
) -> list[Flow]:
    """One group's rules on one bound port (owner ``rules:<port id>/<group id>``); two rules of
    the group with the same match share one flow (the first rule's cookie)."""
    slot = slots.get(group.id)
    if slot is None:
        return []  # no slot left: the group allows nothing
    flows: dict[FlowKey, Flow] = {}
    for rule in group.rules:
        if group.stateless:
            planned = stateless_rule_flows(port_id, ofport, vni, mac, rule, slot)
        else:
            remote_slot = slots.get(rule.remote_group_id) if rule.remote_group_id else None
            planned = rule_flows(port_id, ofport, rule, slot, remote_slot)
        for flw in planned:
            flows.setdefault(flw.key, flw)
    return list(flows.values())


@functools.lru_cache(maxsize=1 << 16)
def stateless_rule_flows(
    port_id: str, ofport: int, vni: int, mac: str, rule: SecurityGroupRule, slot: int
) -> tuple[Flow, ...]:
    """A stateless group's rule on one port, matched before conntrack and never tracked: egress
    in ``SG_EGRESS`` on to the router, ingress in ``L2_LOOKUP`` straight out of the port (above
    the port's way into conntrack). Replies are not recognised: they need rules of their own."""
    if rule.remote_group_id:
        return ()  # not enforced without conntrack (decode reports it): allows nothing
    ck = rule_cookie(port_id, rule.id)
    priority = Priority.SG_STATELESS + slot
    remote = rule.remote_ip_prefix
    if rule.direction == INGRESS:
        base: tuple[MatchField, ...] = (
            MatchField(Reg.SEGMENT, vni),
            MatchField(Field.ETH_DST, mac_to_int(mac)),
        )
        peer = () if not remote or remote == "0.0.0.0/0" else (cidr_match(Field.IPV4_SRC, remote),)
        return tuple(
            Flow(Table.L2_LOOKUP, priority, match(*base, _IS_IP, *peer, *l4), (Output(ofport),), cookie=ck)
            for l4 in _l4_matches(rule)
        )
    peer = () if not remote or remote == "0.0.0.0/0" else (cidr_match(Field.IPV4_DST, remote),)
    return tuple(
        Flow(
            Table.SG_EGRESS,
            priority,
            match(MatchField(Field.IN_PORT, ofport), _IS_IP, *peer, *l4),
            goto=Table.L3_GATEWAY,
            cookie=ck,
        )
        for l4 in _l4_matches(rule)
    )


def port_flows(port: Port, ofport: int, vni: int, gateways: Iterable[Gateway]) -> list[Flow]:
    """A bound port's own security flows (owner ``port:<port id>``), whatever its groups' rules:
    conntrack entry both ways (zone = its ofport), commit, delivery, its default drops and the
    gateway exemption. A connection is committed with the label of the rule that allowed it."""
    return list(_port_own_flows(port.id, ofport, vni, port.mac, tuple(gateways)))


@functools.lru_cache(maxsize=1 << 14)
def _port_own_flows(
    port_id: str, ofport: int, vni: int, mac: str, gateways: tuple[Gateway, ...]
) -> tuple[Flow, ...]:
    """Cached like the rules' flows (a port re-planned with the same binding gets them back)."""
    ck = port_cookie(port_id)
    in_port = MatchField(Field.IN_PORT, ofport)
    sg_port = MatchField(Reg.SG_PORT, ofport)
    into_port = SetField(Reg.SG_PORT, ofport)
    est = ct_state(CT_TRK | CT_EST, CT_RPL)
    block = Ct(ofport, commit=True, mark=BLOCKED)
    commit = Ct(ofport, commit=True, label=Reg.SG_RULE)  # labelled with the rule that allowed it
    unblock = Ct(ofport, commit=True, mark=0, label=Reg.SG_RULE)
    flows = [
        Flow(
            Table.SG_EGRESS,
            Priority.LOCAL,
            match(in_port, _IS_IP),
            (into_port, Ct(ofport, table=Table.SG_EGRESS_RULES)),
            cookie=ck,
        ),
        Flow(
            Table.SG_EGRESS_COMMIT,
            Priority.SG_COMMIT,
            match(sg_port, _IS_IP, ct_state(CT_TRK | CT_NEW)),
            (commit,),
            goto=Table.L3_GATEWAY,
            cookie=ck,
        ),
        Flow(
            Table.L2_LOOKUP,
            Priority.SG_INTO_PORT,
            match((Reg.SEGMENT, vni), (Field.ETH_DST, mac_to_int(mac)), _IS_IP),
            (into_port, Ct(ofport, table=Table.SG_INGRESS_RULES)),
            cookie=ck,
        ),
        Flow(
            Table.SG_INGRESS_COMMIT,
            Priority.SG_COMMIT,
            match(sg_port, _IS_IP, ct_state(CT_TRK | CT_NEW)),
            (commit, Output(ofport)),
            cookie=ck,
        ),
        Flow(Table.SG_INGRESS_COMMIT, Priority.LOCAL, match(sg_port), (Output(ofport),), cookie=ck),
        Flow(Table.SG_EGRESS_RULES, Priority.SG_DROP, match(sg_port), cookie=ck),
        Flow(Table.SG_INGRESS_RULES, Priority.SG_DROP, match(sg_port), cookie=ck),
        # An established connection's original packet no rule allows (its rule went away): the
        # connection is marked blocked, so its replies stop too; a rule allowing it again unmarks it.
        Flow(Table.SG_EGRESS_RULES, Priority.SG_BLOCK, match(sg_port, _IS_IP, est), (block,), cookie=ck),
        Flow(Table.SG_INGRESS_RULES, Priority.SG_BLOCK, match(sg_port, _IS_IP, est), (block,), cookie=ck),
        Flow(
            Table.SG_EGRESS_COMMIT,
            Priority.SG_COMMIT,
            match(sg_port, _IS_IP, est, _MARKED),
            (unblock,),
            goto=Table.L3_GATEWAY,
            cookie=ck,
        ),
        Flow(
            Table.SG_INGRESS_COMMIT,
            Priority.SG_COMMIT,
            match(sg_port, _IS_IP, est, _MARKED),
            (unblock, Output(ofport)),
            cookie=ck,
        ),
    ]
    for gw in gateways:
        flows.append(
            Flow(
                Table.SG_EGRESS,
                Priority.SG_GATEWAY,
                match(
                    in_port,
                    (Field.ETH_DST, mac_to_int(gw.mac)),
                    _IS_IP,
                    (Field.IP_PROTO, IP_PROTO_ICMP),
                    (Field.IPV4_DST, ip_to_int(gw.ip)),
                    (Field.ICMP_TYPE, ICMP_ECHO_REQUEST),
                ),
                goto=Table.L3_GATEWAY,
                cookie=ck,
            )
        )
    return tuple(flows)


def member_addresses(member: Port | Neighbor) -> list[str]:
    """What a port (here or on another host) counts as when its groups are a rule's remote
    group: its fixed IPs and its allowed address pairs (as /32 or their CIDR)."""
    out = [f"{f.ip}/32" for f in member.fixed_ips]
    out += [p.ip if "/" in p.ip else f"{p.ip}/32" for p in member.address_pairs]
    return out
