"""Flow builders for the L2 overlay: one builder per flow kind, all pure.

Each returns the complete flow list of one owner (a port, a neighbour, a segment's flood
list, or the pipeline skeleton); the reconciler diffs it against that owner's previous list.
"""

from __future__ import annotations

import functools
import ipaddress

from agent.model.resources import Neighbor, Port
from agent.planner import cookies
from agent.planner.cookies import Kind
from agent.planner.flows import (
    ARP_REQUEST,
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    IP_PROTO_UDP,
    OFPP_IN_PORT,
    Action,
    Field,
    Flow,
    MatchField,
    Move,
    Output,
    SetField,
    cidr_match,
    ip_to_int,
    mac_to_int,
    match,
)
from agent.planner.pipeline import VNI_BITS, Flag, Priority, Reg, Table

BROADCAST_BIT = 0x010000000000  # the group bit of a MAC's first octet
# An OpenFlow message is at most 65,535 bytes. A flood flow's headers and match take under 200
# of them, its set tunnel id 16, each local port's output 16 and each remote host 32 (tunnel
# destination and output): about 2,000 remote hosts per segment fit in one flow.
_FLOOD_BYTES = 65535 - 200 - 16
_LOCAL_OUTPUT_BYTES, _REMOTE_OUTPUT_BYTES = 16, 32


def flood_room(local_ports: int) -> int:
    """How many remote hosts one segment's flood flow can name next to ``local_ports``."""
    return max(0, (_FLOOD_BYTES - _LOCAL_OUTPUT_BYTES * local_ports) // _REMOTE_OUTPUT_BYTES)


def base_flows(tunnel_ofport: int | None, route_miss: tuple[Action, ...] = ()) -> list[Flow]:
    """Pipeline skeleton: table misses drop (ARP responder falls through to L2), tunnel intake.
    ``route_miss``: what L3_ROUTING does without a route (drop, or punt to the fast path)."""
    ck = cookies.cookie(Kind.BASE, "base")
    flows = [
        Flow(Table.CLASSIFY, Priority.DEFAULT, (), cookie=ck),
        Flow(Table.PORT_SECURITY, Priority.DEFAULT, (), cookie=ck),
        Flow(Table.DHCP, Priority.DEFAULT, (), goto=Table.L2_LOOKUP, cookie=ck),
        Flow(Table.ARP_RESPONDER, Priority.DEFAULT, (), goto=Table.L2_LOOKUP, cookie=ck),
        Flow(Table.L3_GATEWAY, Priority.DEFAULT, (), goto=Table.L2_LOOKUP, cookie=ck),
        Flow(Table.L3_ROUTING, Priority.DEFAULT, (), route_miss, cookie=ck),
        Flow(Table.DVR_RESTORE, Priority.DEFAULT, (), goto=Table.L2_LOOKUP, cookie=ck),
        Flow(Table.L2_LOOKUP, Priority.DEFAULT, (), cookie=ck),
    ]
    if tunnel_ofport is not None:
        flows.append(
            Flow(
                Table.CLASSIFY,
                Priority.TUNNEL,
                match((Field.IN_PORT, tunnel_ofport)),
                (
                    Move(Field.TUNNEL_ID, Reg.SEGMENT, VNI_BITS),
                    SetField(Reg.FLAGS, int(Flag.FROM_TUNNEL)),
                ),
                goto=Table.DVR_RESTORE,
                cookie=ck,
            )
        )
    return flows


# The parts of every ARP answer that do not depend on the address (shared, not rebuilt per flow).
_ARP_SWAP_ETH = Move(Field.ETH_SRC, Field.ETH_DST, 48)
_ARP_OP_REPLY = SetField(Field.ARP_OP, 2)
_ARP_SWAP_SHA = Move(Field.ARP_SHA, Field.ARP_THA, 48)
_ARP_SWAP_SPA = Move(Field.ARP_SPA, Field.ARP_TPA, 32)
_OUT_IN_PORT = Output(OFPP_IN_PORT)
_IS_ARP = MatchField(Field.ETH_TYPE, ETH_TYPE_ARP)
_ARP_REQUEST = MatchField(Field.ARP_OP, ARP_REQUEST)


def arp_responder(vni: int, ip: str, mac: str | int, ck: int, priority: int = Priority.LOCAL) -> Flow:
    """Answer 'who has ip' with mac from inside OVS, back out of the asking port."""
    mac_int = mac if isinstance(mac, int) else mac_to_int(mac)
    ip_int = ip_to_int(ip)
    return Flow(
        Table.ARP_RESPONDER,
        priority,
        # Already in canonical field order (a test checks builders emit canonical matches).
        (MatchField(Reg.SEGMENT, vni), _IS_ARP, _ARP_REQUEST, MatchField(Field.ARP_TPA, ip_int)),
        (
            _ARP_SWAP_ETH,
            SetField(Field.ETH_SRC, mac_int),
            _ARP_OP_REPLY,
            _ARP_SWAP_SHA,
            _ARP_SWAP_SPA,
            SetField(Field.ARP_SHA, mac_int),
            SetField(Field.ARP_SPA, ip_int),
            _OUT_IN_PORT,
        ),
        cookie=ck,
    )


def _single_ips(addresses: list[str]) -> list[str]:
    """Addresses that ARP can be answered for (allowed-pair CIDRs other than /32 cannot)."""
    out = []
    for a in addresses:
        net = ipaddress.IPv4Network(a, strict=False)
        if net.prefixlen == 32:
            out.append(str(net.network_address))
    return out


def port_flows(port: Port, vni: int, ofport: int) -> list[Flow]:
    """A bound local port: classification, anti-spoofing, ARP answers and delivery."""
    ck = cookies.cookie(Kind.PORT, port.id)
    in_port = MatchField(Field.IN_PORT, ofport)
    if not port.admin_up:
        # Admin down: its packets are dropped at intake and nothing is delivered to it.
        return [Flow(Table.CLASSIFY, Priority.LOCAL, match(in_port), cookie=ck)]
    flows = [
        Flow(
            Table.CLASSIFY,
            Priority.LOCAL,
            match(in_port),
            (SetField(Reg.SEGMENT, vni), SetField(Reg.FLAGS, 0)),
            goto=Table.PORT_SECURITY,
            cookie=ck,
        ),
        Flow(
            Table.L2_LOOKUP,
            Priority.LOCAL,
            match((Reg.SEGMENT, vni), (Field.ETH_DST, mac_to_int(port.mac))),
            (Output(ofport),),
            cookie=ck,
        ),
        # DHCP discover/request from the port's own MAC (source 0.0.0.0 before it has a lease).
        Flow(
            Table.PORT_SECURITY,
            Priority.LOCAL,
            match(
                in_port,
                (Field.ETH_SRC, mac_to_int(port.mac)),
                (Field.ETH_TYPE, ETH_TYPE_IPV4),
                (Field.IPV4_SRC, 0),
                (Field.IP_PROTO, IP_PROTO_UDP),
                (Field.UDP_SRC, 68),
                (Field.UDP_DST, 67),
            ),
            goto=Table.DHCP,
            cookie=ck,
        ),
    ]
    sources: dict[str, set[str]] = {port.mac: {f.ip for f in port.fixed_ips}}
    for pair in port.address_pairs:
        sources.setdefault(pair.mac or port.mac, set()).add(pair.ip)
    for mac, ips in sorted(sources.items()):
        eth_src = MatchField(Field.ETH_SRC, mac_to_int(mac))
        for ip in sorted(ips):
            flows.append(
                Flow(
                    Table.PORT_SECURITY,
                    Priority.LOCAL,
                    match(in_port, eth_src, (Field.ETH_TYPE, ETH_TYPE_IPV4), cidr_match(Field.IPV4_SRC, ip)),
                    goto=Table.SG_EGRESS,
                    cookie=ck,
                )
            )
            flows.append(
                Flow(
                    Table.PORT_SECURITY,
                    Priority.LOCAL,
                    match(
                        in_port,
                        eth_src,
                        (Field.ETH_TYPE, ETH_TYPE_ARP),
                        (Field.ARP_SHA, mac_to_int(mac)),
                        cidr_match(Field.ARP_SPA, ip),
                    ),
                    goto=Table.ARP_RESPONDER,
                    cookie=ck,
                )
            )
        for ip in _single_ips(sorted(ips)):
            flows.append(arp_responder(vni, ip, mac, ck))
    return flows


@functools.lru_cache(maxsize=1 << 14)
def _to_host(vni: int, host_ip: int, tunnel_ofport: int) -> tuple[Action, ...]:
    """Into the tunnel to one remote host with one VNI: shared by every neighbour behind it."""
    return (SetField(Field.TUNNEL_ID, vni), SetField(Field.TUN_IPV4_DST, host_ip), Output(tunnel_ofport))


def neighbor_flows(nb: Neighbor, segments: list[tuple[int, str]], tunnel_ofport: int) -> list[Flow]:
    """A port on another host: its MAC tunnels to that host with the segment's VNI; ARP answered here.
    The hot path of big goal states (two flows per neighbour), so matches are built canonical."""
    ck = cookies.cookie(Kind.NEIGHBOR, nb.id)
    host_ip = ip_to_int(nb.host_ip)
    mac = mac_to_int(nb.mac)
    eth_dst = MatchField(Field.ETH_DST, mac)
    flows: list[Flow] = []
    for vni, ip in segments:
        flows.append(
            Flow(
                Table.L2_LOOKUP,
                Priority.REMOTE,
                (MatchField(Reg.SEGMENT, vni), eth_dst),
                _to_host(vni, host_ip, tunnel_ofport),
                cookie=ck,
            )
        )
        flows.append(arp_responder(vni, ip, mac, ck))
    if len(segments) > 1:  # two addresses in one segment share its L2 flow
        return list({f.key: f for f in flows}.values())
    return flows


def flood_flows(
    vni: int, local_ofports: list[int], remote_hosts: list[str], tunnel_ofport: int | None
) -> list[Flow]:
    """Broadcast/multicast inside one segment only: to its local ports, and (from a local port)
    once to each remote host that has ports in the segment. Unknown unicast is dropped: the
    controller tells every host about every address, so nothing is learned by flooding."""
    ck = cookies.cookie(Kind.SEGMENT, str(vni))
    if not local_ofports:
        return []
    multicast = MatchField(Field.ETH_DST, BROADCAST_BIT, BROADCAST_BIT)
    local: list[Action] = [Output(p) for p in local_ofports]
    remote: list[Action] = []
    if tunnel_ofport is not None and remote_hosts:
        remote.append(SetField(Field.TUNNEL_ID, vni))
        for host in remote_hosts:
            remote += [SetField(Field.TUN_IPV4_DST, ip_to_int(host)), Output(tunnel_ofport)]
    return [
        Flow(
            Table.L2_LOOKUP,
            Priority.FLOOD,
            match((Reg.SEGMENT, vni), multicast),
            tuple(local + remote),
            cookie=ck,
        ),
        Flow(
            Table.L2_LOOKUP,
            Priority.FLOOD_FROM_TUNNEL,
            match((Reg.SEGMENT, vni), (Reg.FLAGS, int(Flag.FROM_TUNNEL), int(Flag.FROM_TUNNEL)), multicast),
            tuple(local),
            cookie=ck,
        ),
    ]
