"""Flow builders for distributed routing (DVR): pure, one owner per router or destination.

A packet from a VM to its subnet's gateway MAC enters the router (``L3_GATEWAY``), is routed
on this host (``L3_ROUTING``: TTL-1, source MAC = this host's DVR MAC, destination MAC = the
destination port's, segment = the destination's VNI) and then delivered by ``L2_LOOKUP``,
locally or through the tunnel. A destination on this host gets its gateway MAC as source
straight away; one behind the tunnel gets it back on the receiving host (``DVR_RESTORE``).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from agent.planner import cookies
from agent.planner.cookies import Kind
from agent.planner.flows import (
    ETH_TYPE_IPV4,
    IP_PROTO_ICMP,
    OFPP_IN_PORT,
    OFPVID_PRESENT,
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
    mac_to_int,
    match,
)
from agent.planner.overlay import arp_responder
from agent.planner.pipeline import (
    DVR_MAC_RANGE,
    PUNT_MAC,
    VNI_BITS,
    Priority,
    Reg,
    Table,
    route_priority,
)

_IS_IP = MatchField(Field.ETH_TYPE, ETH_TYPE_IPV4)
_IS_ICMP = MatchField(Field.IP_PROTO, IP_PROTO_ICMP)
_DVR_SOURCE = MatchField(Field.ETH_SRC, mac_to_int(DVR_MAC_RANGE[0]), mac_to_int(DVR_MAC_RANGE[1]))


def router_tag(router_id: str) -> int:
    """The 32-bit value carried in reg2 for a router (BLAKE2b of its id; 0 is never used)."""
    return int.from_bytes(hashlib.blake2b(router_id.encode(), digest_size=4).digest(), "big") or 1


@dataclass(frozen=True, slots=True)
class RouterSubnet:
    """A subnet attached to a router, with what routing needs of it."""

    subnet_id: str
    cidr: str
    vni: int
    gateway_ip: str
    gateway_mac: str


@dataclass(frozen=True, slots=True)
class Destination:
    """A routable address: a local port (delivered here) or a neighbour (behind the tunnel)."""

    ip: str
    mac: str
    vni: int
    local: bool


@dataclass(frozen=True, slots=True)
class StaticRoute:
    subnet: RouterSubnet  # the routing table it belongs to: applies to traffic from this subnet
    destination: str  # CIDR
    priority: int
    next_hop: Destination
    next_hop_gateway_mac: str  # the gateway MAC of the next hop's own subnet


def gateway_flows(
    router_id: str, dvr_mac: str, subnets: list[RouterSubnet], routes: list[StaticRoute]
) -> list[Flow]:
    """The router's own flows: gateways answer ARP and ping, traffic to them enters the router,
    routed packets from other hosts get the gateway MAC back, and the static routes."""
    ck = cookies.cookie(Kind.ROUTER, router_id)
    tag = router_tag(router_id)
    flows: list[Flow] = []
    for sn in subnets:
        gw_mac, gw_ip = mac_to_int(sn.gateway_mac), ip_to_int(sn.gateway_ip)
        segment = MatchField(Reg.SEGMENT, sn.vni)
        to_gateway = MatchField(Field.ETH_DST, gw_mac)
        flows.append(arp_responder(sn.vni, sn.gateway_ip, sn.gateway_mac, ck))
        flows.append(
            Flow(
                Table.L3_GATEWAY,
                Priority.GATEWAY_ECHO,
                (
                    segment,
                    to_gateway,
                    _IS_IP,
                    _IS_ICMP,
                    MatchField(Field.IPV4_DST, gw_ip),
                    MatchField(Field.ICMP_TYPE, 8),
                ),
                (
                    Move(Field.ETH_SRC, Field.ETH_DST, 48),
                    SetField(Field.ETH_SRC, gw_mac),
                    Move(Field.IPV4_SRC, Field.IPV4_DST, 32),
                    SetField(Field.IPV4_SRC, gw_ip),
                    SetField(Field.ICMP_TYPE, 0),
                    Output(OFPP_IN_PORT),
                ),
                cookie=ck,
            )
        )
        flows.append(
            Flow(
                Table.L3_GATEWAY,
                Priority.LOCAL,
                match(segment, to_gateway, _IS_IP),
                (SetField(Reg.ROUTER, tag),),
                goto=Table.L3_ROUTING,
                cookie=ck,
            )
        )
        flows.append(
            Flow(
                Table.DVR_RESTORE,
                Priority.LOCAL,
                match(segment, _DVR_SOURCE, _IS_IP, cidr_match(Field.IPV4_DST, sn.cidr)),
                (SetField(Field.ETH_SRC, gw_mac),),
                goto=Table.L2_LOOKUP,
                cookie=ck,
            )
        )
    for route in routes:
        net = ipaddress.IPv4Network(route.destination)
        flows.append(
            Flow(
                Table.L3_ROUTING,
                route_priority(net.prefixlen, route.priority),
                match(
                    (Reg.ROUTER, tag),
                    _IS_IP,
                    cidr_match(Field.IPV4_SRC, route.subnet.cidr),
                    cidr_match(Field.IPV4_DST, route.destination),
                ),
                _rewrite(route.next_hop, route.next_hop_gateway_mac, dvr_mac),
                goto=Table.L2_LOOKUP,
                cookie=ck,
            )
        )
    return flows


def rewrite_source(dest: Destination, dest_gateway_mac: str, dvr_mac: str) -> str:
    """The source MAC of a routed packet: a local destination sees its gateway MAC at once; a
    remote one gets this host's DVR MAC (and its gateway MAC back from the receiving host)."""
    return dest_gateway_mac if dest.local or not dvr_mac else dvr_mac


def _rewrite(dest: Destination, dest_gateway_mac: str, dvr_mac: str) -> tuple:
    """TTL-1 and the DVR MAC rewrite into the destination's segment."""
    source = rewrite_source(dest, dest_gateway_mac, dvr_mac)
    return (
        DecTtl(),
        SetField(Field.ETH_SRC, mac_to_int(source)),
        SetField(Field.ETH_DST, mac_to_int(dest.mac)),
        SetField(Reg.SEGMENT, dest.vni),
    )


def destination_flow(
    router_id: str, dvr_mac: str, dest: Destination, dest_gateway_mac: str, ck: int, idle_timeout: int = 0
) -> Flow:
    """Host route to one port or neighbour through one router; owned by the destination (or, with
    an idle timeout, an on-demand cache entry of kind ROUTE_CACHE)."""
    return Flow(
        Table.L3_ROUTING,
        route_priority(32),
        (
            MatchField(Reg.ROUTER, router_tag(router_id)),
            _IS_IP,
            MatchField(Field.IPV4_DST, ip_to_int(dest.ip)),
        ),
        _rewrite(dest, dest_gateway_mac, dvr_mac),
        goto=Table.L2_LOOKUP,
        cookie=ck,
        idle_timeout=idle_timeout,
    )


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """One host route as the C fast path holds it: (router tag, destination IP) → rewrite."""

    router_id: str
    tag: int
    ip: str
    dst_mac: str
    src_mac: str  # rewrite_source(): the DVR MAC, or the destination subnet's gateway MAC
    vni: int
    dvr_mac: str
    gateway_mac: str
    local: bool


def route_target(router_id: str, dvr_mac: str, dest: Destination, dest_gateway_mac: str) -> RouteTarget:
    return RouteTarget(
        router_id,
        router_tag(router_id),
        dest.ip,
        dest.mac,
        rewrite_source(dest, dest_gateway_mac, dvr_mac),
        dest.vni,
        dvr_mac,
        dest_gateway_mac,
        dest.local,
    )


def cache_flow(target: RouteTarget, ck: int, idle_timeout: int) -> Flow:
    """The host route installed on demand when the fast path forwarded to ``target``."""
    dest = Destination(target.ip, target.dst_mac, target.vni, target.local)
    return destination_flow(target.router_id, target.dvr_mac, dest, target.gateway_mac, ck, idle_timeout)


# L3_ROUTING's miss toward the fast path: the router and source segment ride in the addresses.
def punt_actions(route_ofport: int) -> tuple:
    return (
        SetField(Field.ETH_SRC, PUNT_MAC),
        Move(Reg.ROUTER, Field.ETH_SRC, 32),
        SetField(Field.ETH_DST, PUNT_MAC),
        Move(Reg.SEGMENT, Field.ETH_DST, VNI_BITS),
        Output(route_ofport),
    )


def reinject_flow(vni: int, vlan: int, route_ofport: int) -> Flow:
    """A frame the fast path rewrote comes back tagged with its segment's index: untag, set the
    segment, deliver."""
    return Flow(
        Table.CLASSIFY,
        Priority.LOCAL,
        (MatchField(Field.IN_PORT, route_ofport), MatchField(Field.VLAN_VID, OFPVID_PRESENT | vlan)),
        (PopVlan(), SetField(Reg.SEGMENT, vni), SetField(Reg.FLAGS, 0)),
        goto=Table.L2_LOOKUP,
        cookie=cookies.cookie(Kind.ROUTE, str(vni)),
    )
