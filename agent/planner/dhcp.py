"""Flows that steer DHCP requests to the agent's responder and its replies back (pure builders).

The responder (native/dhcp.c) reads one internal port (``aca-dhcp``). A request from a bound
port leaves table ``DHCP`` with its Ethernet source rewritten to a tag that names the asking
OpenFlow port (``0a:ca`` + the ofport in four octets). The responder sends the reply straight
out of that port's device when OVSDB reported its ifindex (ovs-vswitchd is not involved);
otherwise it answers into ``aca-dhcp`` from the same tag, and one ``CLASSIFY`` flow per port
restores a real source MAC and outputs to exactly that port. No VLAN tag is pushed, so nothing
depends on how AF_PACKET reports VLANs.

Renewing clients send their request by unicast to the server id (the subnet's gateway IP), so
that address must answer ARP wherever the subnet is served, router or not. A router on this host
already answers for its gateways; where none does, the subnet's own DHCP owner answers, with the
MAC replies come from and below any port's, neighbour's or router's answer for the same address.

Owners (kind ``DHCP``): ``port:<port id>`` (these flows and the port's entry in the
responder), ``lease:<dhcp id>`` (a lease in the responder, no flows) and ``subnet:<subnet id>``
(the server id's ARP answer on a host with ports the subnet's DHCP serves).
"""

from __future__ import annotations

from agent.dhcp.leases import server_ip
from agent.model.resources import Port, ResourceType, Subnet
from agent.model.state import DesiredState
from agent.planner import cookies
from agent.planner.cookies import Kind
from agent.planner.flows import (
    ETH_TYPE_IPV4,
    IP_PROTO_UDP,
    Field,
    Flow,
    MatchField,
    Output,
    SetField,
    mac_to_int,
    match,
)
from agent.planner.overlay import arp_responder
from agent.planner.pipeline import Priority, Table

TAG_PREFIX = 0x0ACA << 32  # locally administered, unicast; the low 32 bits are the ofport
RESPONDER_MAC = "02:ac:a0:00:00:43"  # source of replies when the subnet has no gateway MAC
PORT_PREFIX = "port:"
LEASE_PREFIX = "lease:"
SUBNET_PREFIX = "subnet:"
BOOTPS, BOOTPC = 67, 68  # server (and relay agent) port, client port


def tag_mac(ofport: int) -> int:
    return TAG_PREFIX | (ofport & 0xFFFFFFFF)


def port_owner(port_id: str) -> tuple[Kind, str]:
    return (Kind.DHCP, PORT_PREFIX + port_id)


def lease_owner(dhcp_id: str) -> tuple[Kind, str]:
    return (Kind.DHCP, LEASE_PREFIX + dhcp_id)


def subnet_owner(subnet_id: str) -> tuple[Kind, str]:
    return (Kind.DHCP, SUBNET_PREFIX + subnet_id)


def lease_owners(state: DesiredState, subnet_id: str | None = None) -> set[tuple[Kind, str]]:
    """Every DHCP entry's owner, or those of one subnet."""
    return {
        lease_owner(rid)
        for rid, entry in state.resources[ResourceType.DHCP].items()
        if subnet_id is None or getattr(entry, "subnet_id", None) == subnet_id
    }


def subnet_owners(state: DesiredState) -> set[tuple[Kind, str]]:
    return {subnet_owner(s) for s in state.subnets}


def all_owners(state: DesiredState) -> set[tuple[Kind, str]]:
    return {port_owner(p) for p in state.ports} | lease_owners(state) | subnet_owners(state)


def port_macs(port: Port) -> list[str]:
    """The MACs a port may ask for: its own, then its allowed address pairs'."""
    macs = [port.mac.lower()]
    for pair in port.address_pairs:
        mac = (pair.mac or port.mac).lower()
        if mac not in macs:
            macs.append(mac)
    return macs


def served_subnet(state: DesiredState, port: Port) -> str | None:
    """The subnet whose DHCP the port uses (its first fixed IP's), if DHCP is on there."""
    for fip in port.fixed_ips:
        subnet = state.subnets.get(fip.subnet_id)
        if subnet is not None:
            return subnet.id if subnet.dhcp_enable and subnet.tunnel_id else None
    return None


def steered(
    state: DesiredState, port_id: str, bindings: dict[str, int], dhcp_ofport: int | None
) -> tuple[Port, int, int] | None:
    """(port, ofport, VNI) when the port's DHCP goes to the responder, else None."""
    port = state.ports.get(port_id)
    ofport = bindings.get(port_id)
    if port is None or ofport is None or dhcp_ofport is None or not port.admin_up:
        return None
    if served_subnet(state, port) is None:
        return None
    vni = state.segment_of_port(port)
    return (port, ofport, vni) if vni else None


def port_flows(port: Port, ofport: int, dhcp_ofport: int, responder_mac: str) -> list[Flow]:
    ck = cookies.cookie(Kind.DHCP, PORT_PREFIX + port.id)
    in_port = MatchField(Field.IN_PORT, ofport)
    tag = tag_mac(ofport)
    flows = [
        Flow(
            Table.DHCP,
            Priority.LOCAL,
            match(in_port),
            (SetField(Field.ETH_SRC, tag), Output(dhcp_ofport)),
            cookie=ck,
        ),
        Flow(
            Table.CLASSIFY,
            Priority.LOCAL,
            match((Field.IN_PORT, dhcp_ofport), (Field.ETH_SRC, tag)),
            (SetField(Field.ETH_SRC, mac_to_int(responder_mac)), Output(ofport)),
            cookie=ck,
        ),
    ]
    # Any source IP (0.0.0.0 before a lease, the leased address when renewing or rebinding), from
    # a client (port 68) or from a relay agent in the VM (port 67; the reply goes to its giaddr).
    for mac in port_macs(port):
        for src_port in (BOOTPC, BOOTPS):
            flows.append(
                Flow(
                    Table.PORT_SECURITY,
                    Priority.DHCP,
                    match(
                        in_port,
                        (Field.ETH_SRC, mac_to_int(mac)),
                        (Field.ETH_TYPE, ETH_TYPE_IPV4),
                        (Field.IP_PROTO, IP_PROTO_UDP),
                        (Field.UDP_SRC, src_port),
                        (Field.UDP_DST, BOOTPS),
                    ),
                    goto=Table.DHCP,
                    cookie=ck,
                )
            )
    return flows


def flows(state: DesiredState, oid: str, bindings: dict[str, int], dhcp_ofport: int | None) -> list[Flow]:
    """Flows of one DHCP owner (leases have none)."""
    if not oid.startswith(PORT_PREFIX):
        return []
    found = steered(state, oid[len(PORT_PREFIX) :], bindings, dhcp_ofport)
    if found is None or dhcp_ofport is None:
        return []
    port, ofport, _vni = found
    return port_flows(port, ofport, dhcp_ofport, responder_mac(state, port))


def responder_mac(state: DesiredState, port: Port) -> str:
    """The source of replies to the port: its subnet's gateway MAC, else RESPONDER_MAC."""
    return subnet_mac(state.subnets.get(served_subnet(state, port) or ""))


def subnet_mac(subnet: Subnet | None) -> str:
    return subnet.gateway_mac if subnet is not None and subnet.gateway_mac else RESPONDER_MAC


def server_flows(subnet: Subnet) -> list[Flow]:
    """The subnet's server id answers ARP with the MAC its replies come from, so a renewing client
    reaches the responder by unicast. Only for a subnet with DHCP that this host serves and no
    router of this host answers for (the planner decides); a port, neighbour or router holding the
    same address wins by priority."""
    ck = cookies.cookie(Kind.DHCP, SUBNET_PREFIX + subnet.id)
    return [arp_responder(subnet.tunnel_id, server_ip(subnet), subnet_mac(subnet), ck, Priority.DHCP_SERVER)]
