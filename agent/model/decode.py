"""Protobuf goal states → typed ``Request``s, one per resource, each valid or carrying its reason.

Checked here: syntax (addresses, CIDRs, VNIs, required ids) and what one resource needs to be
programmable at all (IPv4 only, DHCP options that fit their kind and the C engine's limits), so
nothing accepted can make the planner or the DHCP engine raise later. References between
resources need the held state and are checked when the state applies the request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agent._pb import goalstate_pb2 as pb
from agent.dhcp import options as dhcp_options
from agent.model import validate as v
from agent.model.resources import (
    AddressPair,
    Dhcp,
    FixedIp,
    Gateway,
    GatewayDestination,
    KeyValue,
    Neighbor,
    NeighborIp,
    NeighborType,
    Op,
    Port,
    Request,
    Resource,
    ResourceType,
    Router,
    RoutingRule,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    SubnetRoutes,
    UpdateType,
    Vpc,
)

log = logging.getLogger("aca.decode")

_OPS: dict[int, Op] = dict(Op._value2member_map_)  # type: ignore[arg-type]
_NEIGHBOR_TYPES: dict[int, NeighborType] = dict(NeighborType._value2member_map_)  # type: ignore[arg-type]


def _pairs(items: Iterable[Any]) -> tuple[AddressPair, ...]:
    if not items:
        return ()
    return tuple(
        AddressPair(
            ip=v.ipv4_or_cidr(p.ip_address, "allowed address pair"),
            mac=v.mac(p.mac_address, "allowed address pair mac") if p.mac_address else "",
        )
        for p in items
    )


def _extra_dhcp_options(items: Iterable[Any]) -> tuple[KeyValue, ...]:
    """Each option encodes for its kind, and all of them fit one profile of the C engine next to
    the most the agent adds itself (so no router or setting can push the profile over later)."""
    encoded: dict[int, bytes] = {}
    for item in items:
        try:
            code, raw = dhcp_options.encode_extra(item.name, item.value)
        except dhcp_options.OptionError as exc:
            raise v.Invalid(f"extra DHCP option {item.name}={item.value}: {exc}") from None
        encoded[code] = raw
    size = dhcp_options.profile_size(encoded)
    if size > dhcp_options.PROFILE_MAX:
        raise v.Invalid(
            f"extra DHCP options: the subnet's profile could reach {size} bytes, "
            f"the DHCP engine takes at most {dhcp_options.PROFILE_MAX}"
        )
    return tuple(KeyValue(o.name, o.value) for o in items)


def _dns(items: Any) -> tuple[str, ...]:
    """IPv6 servers are kept but not handed out (DHCPv4 cannot carry them); IPv4 ones must fit."""
    dns = tuple(v.ip_any(d.entry, "dns entry") for d in items)
    served = sum(1 for d in dns if ":" not in d)
    if served > dhcp_options.MAX_DNS:
        raise v.Invalid(f"dns entries: {served} IPv4 servers, DHCP hands out at most {dhcp_options.MAX_DNS}")
    return dns


def _vpc(c: Any) -> Vpc:
    return Vpc(
        id=c.id,
        revision=c.revision_number,
        project_id=c.project_id,
        name=c.name,
        cidr=v.cidr(c.cidr) if c.cidr else "",
        tunnel_id=v.vni(c.tunnel_id) if c.tunnel_id else 0,
        gateway_ids=tuple(c.gateway_ids),
    )


def _subnet(c: Any) -> Subnet:
    network = v.ipv4_cidr(v.required(c.cidr, "cidr"))
    gw_ip = v.ipv4(c.gateway.ip_address, "gateway ip") if c.gateway.ip_address else ""
    if gw_ip and not v.in_cidr(gw_ip, network):
        raise v.Invalid(f"gateway ip {gw_ip} is outside {network}")
    return Subnet(
        id=c.id,
        revision=c.revision_number,
        vpc_id=c.vpc_id,
        cidr=network,
        tunnel_id=v.vni(c.tunnel_id),
        name=c.name,
        network_type=c.network_type,
        gateway_ip=gw_ip,
        gateway_mac=v.mac(c.gateway.mac_address, "gateway mac") if c.gateway.mac_address else "",
        dhcp_enable=c.dhcp_enable,
        dns=_dns(c.dns_entry_list),
        extra_dhcp_options=_extra_dhcp_options(c.extra_dhcp_options),
        availability_zone=c.availability_zone,
    )


def _port_macs(mac: str, pairs: tuple[AddressPair, ...]) -> None:
    """The DHCP engine serves a port for its own MAC and its pairs' MACs, up to a limit."""
    macs = {mac} | {p.mac for p in pairs if p.mac}
    if len(macs) > v.MAX_PORT_MACS:
        raise v.Invalid(
            f"allowed address pairs: {len(macs)} MACs with the port's own, "
            f"the DHCP responder takes at most {v.MAX_PORT_MACS}"
        )


def _port(c: Any) -> Port:
    mac = v.mac(v.required(c.mac_address, "mac_address"))
    pairs = _pairs(c.allow_address_pairs)
    _port_macs(mac, pairs)
    return Port(
        id=c.id,
        revision=c.revision_number,
        mac=mac,
        vpc_id=c.vpc_id,
        name=c.name,
        device_id=c.device_id,
        device_owner=c.device_owner,
        admin_up=c.admin_state_up,
        host_ip=v.ipv4(c.host_info.ip_address, "host ip") if c.host_info.ip_address else "",
        host_mac=v.mac(c.host_info.mac_address, "host mac") if c.host_info.mac_address else "",
        fixed_ips=tuple(
            FixedIp(v.required(f.subnet_id, "fixed ip subnet_id"), v.ipv4(f.ip_address, "fixed ip"))
            for f in c.fixed_ips
        ),
        address_pairs=pairs,
        security_group_ids=tuple(s.id for s in c.security_group_ids),
    )


def _neighbor_type(value: int) -> NeighborType:
    kind = _NEIGHBOR_TYPES.get(value)
    if kind is None:
        raise v.Invalid(f"neighbor_type {value} is unknown")
    return kind


def _neighbor(c: Any) -> Neighbor:
    return Neighbor(
        id=c.id,
        revision=c.revision_number,
        mac=v.mac(v.required(c.mac_address, "mac_address")),
        host_ip=v.unicast_ipv4(v.required(c.host_ip_address, "host_ip_address"), "host_ip_address"),
        vpc_id=c.vpc_id,
        name=c.name,
        host_mac=v.mac(c.host_mac_address, "host_mac_address") if c.host_mac_address else "",
        fixed_ips=tuple(
            [
                NeighborIp(
                    kind=_neighbor_type(f.neighbor_type),
                    subnet_id=f.subnet_id,
                    ip=v.ipv4(f.ip_address, "fixed ip"),
                    tunnel_id=v.vni(f.tunnel_id) if f.tunnel_id else 0,
                )
                for f in c.fixed_ips
            ]
        ),
        address_pairs=_pairs(c.allow_address_pairs),
        security_group_ids=tuple(c.security_group_ids),
    )


_SG_IPV4 = 0
_SG_PROTOCOLS = {0: "TCP", 1: "UDP", 2: "ICMP"}  # what the security-group stage enforces


def _unenforced(r: Any, stateless: bool) -> str:
    """Why the agent cannot enforce a (well-formed) rule, "" when it can (docs/security-groups.md)."""
    if r.ethertype != _SG_IPV4:
        return f"rule {r.id}: IPv6 rules are not enforced"
    if r.protocol not in _SG_PROTOCOLS:
        return f"rule {r.id}: protocol {r.protocol} is not enforced (TCP, UDP, ICMP are)"
    if r.remote_ip_prefix and ":" in r.remote_ip_prefix:
        return f"rule {r.id}: remote_ip_prefix {r.remote_ip_prefix} is not IPv4"
    if r.remote_ip_prefix and r.remote_group_id:
        return f"rule {r.id}: remote_ip_prefix and remote_group_id are both set"
    if _SG_PROTOCOLS[r.protocol] == "ICMP" and max(r.port_range_min, r.port_range_max) > 255:
        return f"rule {r.id}: ICMP type/code beyond 255"
    if stateless and r.remote_group_id:
        return f"rule {r.id}: a remote group in a stateless group is not enforced"
    return ""


def _live_rules(c: Any) -> list[Any]:
    """The group's rules: the list is always the whole group (a rule's own DELETE leaves it out)."""
    return [r for r in c.security_group_rules if r.operation_type != Op.DELETE]


def _security_group(c: Any) -> SecurityGroup:
    rules = []
    for r in _live_rules(c):
        if r.port_range_max and r.port_range_min > r.port_range_max:
            raise v.Invalid(f"rule {r.id}: port_range_min {r.port_range_min} > max {r.port_range_max}")
        if max(r.port_range_min, r.port_range_max) > 65535:
            raise v.Invalid(f"rule {r.id}: port range beyond 65535")
        remote = v.cidr(r.remote_ip_prefix, "remote_ip_prefix") if r.remote_ip_prefix else ""
        if _unenforced(r, c.stateless):
            continue  # held out of the group, reported by _security_group_partial
        rules.append(
            SecurityGroupRule(
                id=r.id,
                direction=r.direction,
                ethertype=r.ethertype,
                protocol=r.protocol,
                port_range_min=r.port_range_min,
                port_range_max=r.port_range_max,
                remote_ip_prefix=remote,
                remote_group_id=r.remote_group_id,
            )
        )
    return SecurityGroup(
        id=c.id,
        revision=c.revision_number,
        vpc_id=c.vpc_id,
        name=c.name,
        rules=tuple(rules),
        stateless=c.stateless,
        member_ips=tuple(v.ipv4_or_cidr(ip, "member_ips") for ip in c.member_ips),
    )


def _security_group_partial(c: Any) -> str:
    """The rules of a group the agent does not enforce, as its INVALID_ARG reason."""
    return "; ".join(filter(None, (_unenforced(r, c.stateless) for r in _live_rules(c))))


def _dhcp(c: Any) -> Dhcp:
    """An IPv4 lease: without an address nothing would be served, and DHCPv6 is not."""
    if c.ipv6_address:
        raise v.Invalid(f"ipv6_address {c.ipv6_address}: {v.NO_IPV6}")
    hostname = c.port_host_name
    if len(hostname.encode()) > dhcp_options.TLV_MAX or "\0" in hostname:
        raise v.Invalid(f"port_host_name: more than {dhcp_options.TLV_MAX} bytes, or a NUL in it")
    return Dhcp(
        id=c.id,
        revision=c.revision_number,
        subnet_id=v.required(c.subnet_id, "subnet_id"),
        mac=v.mac(v.required(c.mac_address, "mac_address")),
        ipv4=v.ipv4(v.required(c.ipv4_address, "ipv4_address"), "ipv4_address"),
        hostname=hostname,
    )


def _option_121(table: SubnetRoutes) -> None:
    """The subnet's DHCP option 121 carries the table's routes and a default route: 255 bytes."""
    routes = {(r.destination, r.next_hop_ip) for r in table.rules if r.next_hop_ip}
    specific = [r for r in routes if not r[0].endswith("/0")]
    size = len(dhcp_options.classless_routes(specific)) + dhcp_options.DEFAULT_ROUTE_SIZE
    if size > dhcp_options.TLV_MAX:
        raise v.Invalid(
            f"routing table of subnet {table.subnet_id}: its routes take {size} bytes in DHCP "
            f"option 121 with the default route, at most {dhcp_options.TLV_MAX} fit"
        )


def _router(c: Any) -> Router:
    tables = []
    for t in c.subnet_routing_tables:
        rules = tuple(
            RoutingRule(
                id=r.id,
                destination=v.ipv4_cidr(v.required(r.destination, "route destination"), "route destination"),
                next_hop_ip=v.ipv4(r.next_hop_ip, "next_hop_ip") if r.next_hop_ip else "",
                priority=r.priority,
                name=r.name,
                destination_type=r.routing_rule_extra_info.destination_type,
                next_hop_mac=(
                    v.mac(r.routing_rule_extra_info.next_hop_mac, "next_hop_mac")
                    if r.routing_rule_extra_info.next_hop_mac
                    else ""
                ),
            )
            for r in t.routing_rules
            if r.operation_type != Op.DELETE
        )
        removed = tuple(r.id for r in t.routing_rules if r.operation_type == Op.DELETE)
        table = SubnetRoutes(v.required(t.subnet_id, "routing table subnet_id"), rules, removed)
        _option_121(table)
        tables.append(table)
    return Router(
        id=c.id,
        revision=c.revision_number,
        dvr_mac=v.mac(c.host_dvr_mac_address, "host_dvr_mac_address") if c.host_dvr_mac_address else "",
        subnets=tuple(tables),
    )


def _gateway(c: Any) -> Gateway:
    arion = c.arion_info if c.WhichOneof("extra_info") == "arion_info" else None
    return Gateway(
        id=c.id,
        revision=c.revision_number,
        gateway_type=c.gateway_type,
        destinations=tuple(
            GatewayDestination(
                v.ipv4(d.ip_address, "destination ip"), v.mac(d.mac_address, "destination mac")
            )
            for d in c.destinations
        ),
        vpc_id=arion.vpc_id if arion else "",
        vni=arion.vni if arion else 0,
        subnet_id=arion.subnet_id if arion else "",
    )


_DECODERS: dict[ResourceType, Callable[[Any], Resource]] = {
    ResourceType.VPC: _vpc,
    ResourceType.SUBNET: _subnet,
    ResourceType.PORT: _port,
    ResourceType.NEIGHBOR: _neighbor,
    ResourceType.SECURITYGROUP: _security_group,
    ResourceType.DHCP: _dhcp,
    ResourceType.ROUTER: _router,
    ResourceType.GATEWAY: _gateway,
}

# (GoalState v1 field, GoalStateV2 field, type)
_STATE_FIELDS: tuple[tuple[str, ResourceType], ...] = (
    ("vpc_states", ResourceType.VPC),
    ("subnet_states", ResourceType.SUBNET),
    ("port_states", ResourceType.PORT),
    ("neighbor_states", ResourceType.NEIGHBOR),
    ("security_group_states", ResourceType.SECURITYGROUP),
    ("dhcp_states", ResourceType.DHCP),
    ("router_states", ResourceType.ROUTER),
    ("gateway_states", ResourceType.GATEWAY),
)


def decode_state(rtype: ResourceType, state: Any, map_key: str = "", acted_on: bool = True) -> Request:
    """Decode one ``XState``; never raises for bad content, returns a Request with ``error`` set."""
    config = state.configuration
    rid = config.id or _bare_id(map_key)
    op = _OPS.get(state.operation_type)
    if op is None:
        # An operation this agent does not know is an error the controller must see, not context.
        return Request(
            rtype, Op.INFO, rid, error=f"unknown operation_type {state.operation_type}", acted_on=acted_on
        )
    update_type = UpdateType.FULL
    # A security group always arrives whole (its rule list is the group's): read as FULL.
    delta_types = rtype is not ResourceType.GATEWAY and rtype is not ResourceType.SECURITYGROUP
    if delta_types and config.update_type == UpdateType.DELTA and op is Op.UPDATE:
        update_type = UpdateType.DELTA
    acted = acted_on and op not in (Op.INFO, Op.GET)
    if not rid:
        return Request(rtype, op, "", update_type, error="resource id is empty", acted_on=acted)
    if op is Op.DELETE:
        return Request(rtype, op, rid, update_type, acted_on=acted, revision=config.revision_number)
    try:
        resource = _DECODERS[rtype](config)
    except v.Invalid as exc:
        if not acted:  # context gets no status: the resources that reference it would only
            # say "unknown subnet", so the reason is logged here
            log.warning("event=context_rejected id=%s type=%s reason=%s", rid, rtype.name, str(exc))
        return Request(rtype, op, rid, update_type, error=str(exc), acted_on=acted)
    if resource.id != rid:
        resource = type(resource)(**{**_fields(resource), "id": rid})
    partial = _security_group_partial(config) if rtype is ResourceType.SECURITYGROUP else ""
    return Request(rtype, op, rid, update_type, resource=resource, acted_on=acted, partial=partial)


def _fields(resource: Resource) -> dict[str, Any]:
    return {name: getattr(resource, name) for name in resource.__slots__}


def _bare_id(map_key: str) -> str:
    """Neighbour map keys arrive as ``L2/<port id>`` or ``L3/<port id>``."""
    prefix, sep, rest = map_key.partition("/")
    return rest if sep and prefix in ("L2", "L3") else map_key


def decode_v1(message: Any) -> list[Request]:
    return [
        decode_state(rtype, state)
        for field_name, rtype in _STATE_FIELDS
        for state in getattr(message, field_name)
    ]


def decode_v2(message: Any, host_ip: str) -> list[Request]:
    """Decode a GoalStateV2. Resources listed under another host only are context, not acted on.

    When ``host_resources`` names this host, only the resources it lists are acted on; when it
    is empty or does not name this host, everything in the message is for this host.
    """
    mine: set[tuple[int, str]] | None = None
    if host_ip and host_ip in message.host_resources:
        mine = {(r.type, r.id) for r in message.host_resources[host_ip].resources}
    requests = []
    for field_name, rtype in _STATE_FIELDS:
        for key, state in getattr(message, field_name).items():
            acted = mine is None or (rtype, key) in mine or (rtype, _bare_id(key)) in mine
            requests.append(decode_state(rtype, state, key, acted))
    return requests


@dataclass(frozen=True, slots=True)
class Wire:
    """A goal state as it arrived: what the store journals, and decodes again on replay."""

    version: int  # 1: GoalState, 2: GoalStateV2
    raw: bytes
    host_ip: str = ""  # the host a GoalStateV2 was decoded for


def decode_wire(wire: Wire) -> list[Request]:
    if wire.version == 1:
        return decode_v1(pb.GoalState.FromString(wire.raw))
    return decode_v2(pb.GoalStateV2.FromString(wire.raw), wire.host_ip)
