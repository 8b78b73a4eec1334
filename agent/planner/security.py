"""Security groups enforced through conntrack: pure builders from a port's groups to its flows.

Design and the reasons behind it: ``docs/security-groups.md``. In short: each port with groups
has its own conntrack zone (its ofport); a packet from it is looked up in that zone before its
egress rules, a packet to it before its ingress rules. Every rule is an allow that matches new
and established packets of the original direction (so removing it stops its connections at
the next packet); replies and related packets of tracked connections pass; invalid ones drop;
anything else drops. New connections are committed after a rule allowed them.

One owner per port (kind ``SECURITY``, owner id = the port id) holds all of the port's flows;
each rule's flows carry a cookie of their own (the port and the rule id), so a rule change
rewrites that rule's flows only and ``acactl dump sg`` counts packets per rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.model.resources import Port, SecurityGroup, SecurityGroupRule
from agent.planner import cookies
from agent.planner.cookies import Kind
from agent.planner.flows import (
    CT_INV,
    CT_NEW,
    CT_REL,
    CT_RPL,
    CT_TRK,
    ETH_TYPE_IPV4,
    IP_PROTO_ICMP,
    IP_PROTO_TCP,
    IP_PROTO_UDP,
    Ct,
    Field,
    Flow,
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

EGRESS, INGRESS = 0, 1  # SecurityGroupRule.direction on the wire
TCP, UDP, ICMP = 0, 1, 2  # the wire's Protocol enum
ICMP_ECHO_REQUEST = 8
_IP_PROTO = {TCP: IP_PROTO_TCP, UDP: IP_PROTO_UDP, ICMP: IP_PROTO_ICMP}
_DST_PORT = {TCP: Field.TCP_DST, UDP: Field.UDP_DST}
_IS_IP = MatchField(Field.ETH_TYPE, ETH_TYPE_IPV4)


def port_owner(port_id: str) -> tuple[Kind, str]:
    return (Kind.SECURITY, port_id)


def rule_cookie(port_id: str, rule_id: str) -> int:
    """The cookie of one rule's flows on one port (what per-rule counters are read by)."""
    return cookies.cookie(Kind.SECURITY, f"{port_id}/{rule_id}")


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
            Flow(rules, Priority.SG_REPLY, match(ct_state(CT_TRK | CT_RPL)), goto=commit, cookie=ck),
            Flow(rules, Priority.SG_REPLY, match(ct_state(CT_TRK | CT_REL)), goto=commit, cookie=ck),
        ]
    return flows


def _remotes(rule: SecurityGroupRule, members: Mapping[str, list[str]]) -> list[str | None]:
    """The remote side of a rule as CIDRs (None: anyone). A remote group with no member known
    here allows nobody."""
    if rule.remote_group_id:
        return list(members.get(rule.remote_group_id, ()))
    return [rule.remote_ip_prefix or None]


def rule_flows(
    port_id: str, ofport: int, rule: SecurityGroupRule, members: Mapping[str, list[str]]
) -> list[Flow]:
    """One rule's allow flows on one port: original-direction packets, new or established."""
    ingress = rule.direction == INGRESS
    table = Table.SG_INGRESS_RULES if ingress else Table.SG_EGRESS_RULES
    goto = Table.SG_INGRESS_COMMIT if ingress else Table.SG_EGRESS_COMMIT
    remote_field = Field.IPV4_SRC if ingress else Field.IPV4_DST
    ck = rule_cookie(port_id, rule.id)
    base = (MatchField(Reg.SG_PORT, ofport), _IS_IP, ct_state(CT_TRK, CT_RPL))
    flows = []
    for remote in _remotes(rule, members):
        peer = () if remote is None or remote == "0.0.0.0/0" else (cidr_match(remote_field, remote),)
        for l4 in _l4_matches(rule):
            flows.append(Flow(table, Priority.SG_RULE, match(*base, *peer, *l4), goto=goto, cookie=ck))
    return flows


def port_flows(
    port: Port,
    ofport: int,
    vni: int,
    groups: Iterable[SecurityGroup],
    members: Mapping[str, list[str]],
    gateways: Iterable[Gateway],
) -> list[Flow]:
    """Every security-group flow of one bound port with groups (zone = its ofport). Two rules
    with the same match share one flow (the first rule's cookie)."""
    ck = cookies.cookie(Kind.SECURITY, port.id)
    in_port = MatchField(Field.IN_PORT, ofport)
    sg_port = MatchField(Reg.SG_PORT, ofport)
    into_port = SetField(Reg.SG_PORT, ofport)
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
            (Ct(ofport, commit=True),),
            goto=Table.L3_GATEWAY,
            cookie=ck,
        ),
        Flow(
            Table.L2_LOOKUP,
            Priority.SG_INTO_PORT,
            match((Reg.SEGMENT, vni), (Field.ETH_DST, mac_to_int(port.mac)), _IS_IP),
            (into_port, Ct(ofport, table=Table.SG_INGRESS_RULES)),
            cookie=ck,
        ),
        Flow(
            Table.SG_INGRESS_COMMIT,
            Priority.SG_COMMIT,
            match(sg_port, _IS_IP, ct_state(CT_TRK | CT_NEW)),
            (Ct(ofport, commit=True), Output(ofport)),
            cookie=ck,
        ),
        Flow(Table.SG_INGRESS_COMMIT, Priority.LOCAL, match(sg_port), (Output(ofport),), cookie=ck),
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
    seen = {f.key for f in flows}
    for group in groups:
        for rule in group.rules:
            for flw in rule_flows(port.id, ofport, rule, members):
                if flw.key not in seen:
                    seen.add(flw.key)
                    flows.append(flw)
    return flows


def member_addresses(port: Port) -> list[str]:
    """What a port counts as when its groups are a rule's remote group: its fixed IPs and its
    allowed address pairs (as /32 or their CIDR)."""
    out = [f"{f.ip}/32" for f in port.fixed_ips]
    out += [p.ip if "/" in p.ip else f"{p.ip}/32" for p in port.address_pairs]
    return out
