"""Which owners a change touches, and each owner's flows: work proportional to the change.

The planner keeps small membership indexes (which bound ports and which remote hosts each
segment has) so a port or neighbour change re-plans that resource and, only when membership
changed, its segment's flood list — never the whole table.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from agent.model.resources import Neighbor, Port, ResourceType, Router
from agent.model.state import DesiredState
from agent.planner import cookies, dhcp, overlay, routing, security
from agent.planner.cookies import Kind
from agent.planner.flows import Flow
from agent.planner.pipeline import ROUTE_VLAN_MAX
from agent.planner.routing import Destination, RouterSubnet, RouteTarget, StaticRoute
from agent.planner.sg_index import SecurityIndex

log = logging.getLogger("aca.planner")

Owner = tuple[Kind, str]
BASE_OWNER: Owner = (Kind.BASE, "base")


def port_owner(port_id: str) -> Owner:
    return (Kind.PORT, port_id)


def neighbor_owner(nb_id: str) -> Owner:
    return (Kind.NEIGHBOR, nb_id)


def segment_owner(vni: int) -> Owner:
    return (Kind.SEGMENT, str(vni))


def router_owner(router_id: str) -> Owner:
    return (Kind.ROUTER, router_id)


def route_segment_owner(vni: int) -> Owner:
    return (Kind.ROUTE, str(vni))


Member = tuple[ResourceType, str]  # a port or neighbour, by type and id
Interface = tuple[str, str | None, int, int]  # an OVSDB interface: name, iface-id, ofport, ifindex
_NO_SUBNETS: frozenset[str] = frozenset()
_NO_HOSTS: frozenset[tuple[int, str]] = frozenset()
_MEMBER_OWNER = {ResourceType.PORT: port_owner, ResourceType.NEIGHBOR: neighbor_owner}

PROACTIVE, ON_DEMAND = "proactive", "on_demand"  # routing modes: neighbour host routes ahead or on use


class Planner:
    def __init__(self, state: DesiredState, local_ip: str, routing_mode: str = PROACTIVE) -> None:
        self.state = state
        self.local_ip = local_ip
        self.routing_mode = routing_mode
        self.tunnel_ofport: int | None = None
        self.bindings: dict[str, int] = {}  # port id → ofport it is programmed with
        self.ifindexes: dict[str, int] = {}  # port id → its device's ifindex (0: unknown)
        self._ifindex_of: dict[int, int] = {}  # ofport → ifindex, from OVSDB
        self._by_iface_id: dict[str, int] = {}  # external_ids:iface-id → ofport
        self._by_tap_name: dict[str, int] = {}  # Nova's tap<first 11 chars of port id> → ofport
        self._port_segment: dict[str, int] = {}  # programmed port → its VNI
        self._segment_ports: dict[int, dict[str, int]] = defaultdict(dict)
        self._neighbor_hosts: dict[str, set[tuple[int, str]]] = {}
        self._segment_hosts: dict[int, dict[str, int]] = defaultdict(dict)  # VNI → remote host → neighbours
        self._subnet_routers: dict[str, set[str]] = defaultdict(set)  # subnet → routers attached
        self._router_subnets: dict[str, set[str]] = {}  # router → its subnets, as last planned
        self._next_hop_routers: dict[str, set[str]] = defaultdict(set)  # next-hop IP → routers
        self.dhcp_ofport: int | None = None  # the DHCP responder's internal port
        self.route_ofport: int | None = None  # the route fast path's internal port
        self.route_vlans: dict[int, int] = {}  # VNI routed into → its 802.1Q index on this host
        self._subnet_members: dict[str, set[Member]] = defaultdict(set)  # subnet → its ports/neighbours
        self._member_subnets: dict[Member, frozenset[str]] = {}
        self._subnet_vnis: dict[str, int] = {}  # subnet → the VNI its members were indexed with
        self.unplannable: dict[Owner, str] = {}  # owners whose index failed at the last rebuild
        self.security = SecurityIndex(state)

    # ------------------------------------------------------------------ what a change touches
    def touch(self, rtype: ResourceType, rid: str) -> set[Owner]:
        if rtype is ResourceType.PORT:
            return self._touch_port(rid)
        if rtype is ResourceType.NEIGHBOR:
            return self._touch_neighbor(rid)
        if rtype is ResourceType.SUBNET:
            return self._touch_subnet(rid)
        if rtype is ResourceType.ROUTER:
            return self._touch_router(rid) | dhcp.lease_owners(self.state)  # option 121 routes
        if rtype is ResourceType.DHCP:
            return {dhcp.lease_owner(rid)}
        if rtype is ResourceType.SECURITYGROUP:
            return self.security.group_changed(rid)
        return set()

    def set_interfaces(self, interfaces: list[Interface]) -> set[Owner]:
        """The bridge's interfaces from OVSDB. A port binds to the interface whose iface-id is its
        id, or to the one named tap + its id's first 11 chars. Re-plans only the ports whose
        binding changed (another ofport, or the same one on a re-created device)."""
        self._by_iface_id = {iid: ofp for _n, iid, ofp, _x in interfaces if iid and ofp > 0}
        self._by_tap_name = {n[3:]: ofp for n, _i, ofp, _x in interfaces if n.startswith("tap") and ofp > 0}
        self._ifindex_of = {ofp: ifx for _n, _i, ofp, ifx in interfaces if ofp > 0}
        owners: set[Owner] = set()
        for port_id in set(self.state.ports) | set(self.bindings):
            ofport = self._ofport_of(port_id)
            device = self._ifindex_of.get(ofport, 0) if ofport is not None else 0
            if ofport != self.bindings.get(port_id) or device != self.ifindexes.get(port_id, 0):
                owners |= self._touch_port(port_id)
        return owners

    def _ofport_of(self, port_id: str) -> int | None:
        if port_id not in self.state.ports:
            return None
        return self._by_iface_id.get(port_id) or self._by_tap_name.get(port_id[:11])

    def set_tunnel(self, ofport: int | None) -> set[Owner]:
        if ofport == self.tunnel_ofport:
            return set()
        self.tunnel_ofport = ofport
        return self.all_owners()

    def set_dhcp_port(self, ofport: int | None) -> set[Owner]:
        """The responder's port appeared (or went): re-plan every port's DHCP steering and every
        subnet's server id answer."""
        if ofport == self.dhcp_ofport:
            return set()
        self.dhcp_ofport = ofport
        return {dhcp.port_owner(p) for p in self.state.ports} | dhcp.subnet_owners(self.state)

    def set_route_port(self, ofport: int | None) -> set[Owner]:
        """The fast path's port appeared (or went): L3_ROUTING's miss and every segment's re-entry."""
        if ofport == self.route_ofport:
            return set()
        self.route_ofport = ofport
        return {BASE_OWNER} | {route_segment_owner(v) for v in self.route_vlans}

    def all_owners(self) -> set[Owner]:
        owners = {BASE_OWNER}
        owners |= {route_segment_owner(v) for v in self.route_vlans}
        owners |= dhcp.all_owners(self.state)
        owners |= {port_owner(p) for p in self.state.ports}
        owners |= self.security.owners()
        owners |= {neighbor_owner(n) for n in self.state.neighbors}
        owners |= {segment_owner(v) for v in set(self._segment_ports) | set(self._segment_hosts)}
        owners |= {router_owner(r) for r in self.state.resources[ResourceType.ROUTER]}
        return owners

    def rebuild(self) -> set[Owner]:
        """Recompute every index from the state (start-up, resync)."""
        self._port_segment.clear()
        self._segment_ports.clear()
        self._neighbor_hosts.clear()
        self._segment_hosts.clear()
        self._subnet_routers.clear()
        self._router_subnets.clear()
        self._next_hop_routers.clear()
        self.route_vlans.clear()
        self._subnet_members.clear()
        self._member_subnets.clear()
        self._subnet_vnis = {sid: sn.tunnel_id for sid, sn in self.state.subnets.items() if sn.tunnel_id}
        self.security.reset()
        self.unplannable = {}
        for rtype, touch in (
            (ResourceType.ROUTER, self._touch_router),
            (ResourceType.PORT, self._touch_port),
            (ResourceType.NEIGHBOR, self._index_neighbor),
        ):
            for rid in self.state.resources[rtype]:
                try:
                    touch(rid)
                except Exception as exc:  # one resource must not stop the resync (or the start)
                    owner = router_owner(rid) if rtype is ResourceType.ROUTER else _MEMBER_OWNER[rtype](rid)
                    self.unplannable[owner] = repr(exc)
        return self.all_owners()

    def _index_member(self, member: Member, subnet_ids: frozenset[str]) -> None:
        """Which subnets a port's or neighbour's fixed IPs are in, so a subnet or router change
        visits its own members, not every port and neighbour of the host."""
        old = self._member_subnets.get(member, _NO_SUBNETS)
        if old == subnet_ids:
            return
        for sid in old - subnet_ids:
            members = self._subnet_members[sid]
            members.discard(member)
            if not members:
                del self._subnet_members[sid]
        for sid in subnet_ids - old:
            self._subnet_members[sid].add(member)
        if subnet_ids:
            self._member_subnets[member] = subnet_ids
        else:
            del self._member_subnets[member]

    def _members(self, subnet_ids: Iterable[str]) -> list[Member]:
        return [m for sid in subnet_ids for m in self._subnet_members.get(sid, ())]

    def _replan(self, member: Member) -> set[Owner]:
        """The owners to re-plan when a port or neighbour (or its subnet) changed: its own, its
        DHCP steering (a port, when the responder runs), and the routers using it as next hop."""
        rtype, rid = member
        if rtype is ResourceType.PORT:
            held: Port | Neighbor | None = self.state.ports.get(rid)
            owners = {port_owner(rid), security.port_owner(rid)}
            if self.dhcp_ofport is not None:  # without the responder no port has DHCP steering
                owners.add(dhcp.port_owner(rid))
        else:
            held = self.state.neighbors.get(rid)
            owners = {neighbor_owner(rid)}
        if held is not None and self._next_hop_routers:
            owners |= {router_owner(r) for f in held.fixed_ips for r in self._next_hop_routers.get(f.ip, ())}
        return owners

    def _touch_port(self, port_id: str) -> set[Owner]:
        port = self.state.ports.get(port_id)
        subnet_ids = frozenset(f.subnet_id for f in port.fixed_ips) if port else _NO_SUBNETS
        old_subnets = self._member_subnets.get((ResourceType.PORT, port_id), _NO_SUBNETS)
        self._index_member((ResourceType.PORT, port_id), subnet_ids)
        owners = self._replan((ResourceType.PORT, port_id)) | self.security.port_changed(port_id, port)
        if self.dhcp_ofport is not None:  # whether this host serves those subnets may change
            owners |= {dhcp.subnet_owner(sid) for sid in old_subnets | subnet_ids}
        ofport = self._ofport_of(port_id)
        if ofport is None:
            self.bindings.pop(port_id, None)
            self.ifindexes.pop(port_id, None)
        else:
            self.bindings[port_id] = ofport
            self.ifindexes[port_id] = self._ifindex_of.get(ofport, 0)
        old_vni = self._port_segment.pop(port_id, None)
        if old_vni is not None:
            self._segment_ports[old_vni].pop(port_id, None)
            owners.add(segment_owner(old_vni))
        if port is not None and ofport is not None and port.admin_up:
            vni = self.state.segment_of_port(port)
            if vni:
                self._port_segment[port_id] = vni
                self._segment_ports[vni][port_id] = ofport
                owners.add(segment_owner(vni))
        return owners

    def _touch_neighbor(self, nb_id: str) -> set[Owner]:
        return self._index_neighbor(nb_id) | self._replan((ResourceType.NEIGHBOR, nb_id))

    def _index_neighbor(self, nb_id: str) -> set[Owner]:
        """Index a neighbour (its subnets, its remote host per segment); the segments whose
        flood lists changed. ``rebuild`` needs only this: it re-plans every owner anyway."""
        nb = self.state.neighbors.get(nb_id)
        subnet_ids = frozenset(f.subnet_id for f in nb.fixed_ips) if nb else _NO_SUBNETS
        self._index_member((ResourceType.NEIGHBOR, nb_id), subnet_ids)
        owners = self.security.neighbor_changed(nb_id, nb)  # its remote-group memberships
        new: set[tuple[int, str]] = set()
        if nb is not None and nb.host_ip != self.local_ip:
            new = {(vni, nb.host_ip) for vni, _ip in self.state.neighbor_segments(nb)}
        old = self._neighbor_hosts.pop(nb_id, _NO_HOSTS)
        if new:
            self._neighbor_hosts[nb_id] = new
        if old == new:
            return owners
        for vni, host in old - new if old else ():  # (a rebuild indexes into empty indexes)
            counts = self._segment_hosts[vni]
            if counts[host] > 1:
                counts[host] -= 1
            else:
                del counts[host]
                owners.add(segment_owner(vni))
        for vni, host in new - old if old else new:
            counts = self._segment_hosts[vni]
            held = counts.get(host, 0)
            if not held:
                owners.add(segment_owner(vni))
            counts[host] = held + 1
        return owners

    def _touch_router(self, router_id: str) -> set[Owner]:
        """A router change re-plans the router and every destination in its old and new subnets
        (a new DVR MAC rewrites every routed flow)."""
        router: Router | None = self.state.resources[ResourceType.ROUTER].get(router_id)  # type: ignore[assignment]
        old = self._router_subnets.pop(router_id, set())
        new = {t.subnet_id for t in router.subnets} if router else set()
        for sid in old - new:
            self._subnet_routers[sid].discard(router_id)
        for sid in new:
            self._subnet_routers[sid].add(router_id)
        for routers in self._next_hop_routers.values():
            routers.discard(router_id)
        if router is not None:
            self._router_subnets[router_id] = new
            for table in router.subnets:
                for rule in table.rules:
                    if rule.next_hop_ip:
                        self._next_hop_routers[rule.next_hop_ip].add(router_id)
        owners = {router_owner(router_id)} | self._refresh_route_vlans()
        owners |= {_MEMBER_OWNER[rtype](rid) for rtype, rid in self._members(old | new)}
        owners |= {dhcp.subnet_owner(sid) for sid in old | new}  # who answers ARP for the gateway
        return owners

    def _refresh_route_vlans(self) -> set[Owner]:
        """Give every VNI of a routed subnet an 802.1Q index (smallest free), free the unused."""
        wanted = set()
        for sid, routers in self._subnet_routers.items():
            sn = self.state.subnets.get(sid)
            if routers and sn is not None and sn.tunnel_id:
                wanted.add(sn.tunnel_id)
        changed = {route_segment_owner(v) for v in set(self.route_vlans) - wanted}
        for vni in set(self.route_vlans) - wanted:
            del self.route_vlans[vni]
        used = set(self.route_vlans.values())
        free = (i for i in range(1, ROUTE_VLAN_MAX + 1) if i not in used)
        for vni in sorted(wanted - set(self.route_vlans)):
            index = next(free, None)
            if index is None:
                break  # more routed segments than 802.1Q can name: the rest is never punted back
            self.route_vlans[vni] = index
            changed.add(route_segment_owner(vni))
        return changed

    def _touch_subnet(self, subnet_id: str) -> set[Owner]:
        owners: set[Owner] = {router_owner(r) for r in self._subnet_routers.get(subnet_id, ())}
        owners |= self._refresh_route_vlans()
        owners |= dhcp.lease_owners(self.state, subnet_id) | {dhcp.subnet_owner(subnet_id)}
        subnet = self.state.subnets.get(subnet_id)
        vni = subnet.tunnel_id if subnet is not None else 0
        members = self._members([subnet_id])
        if self._subnet_vnis.get(subnet_id, 0) != vni:  # members move segment: re-index them
            for rtype, rid in members:
                owners |= self.touch(rtype, rid)
        else:  # same segment (a new gateway, DNS, DHCP on or off, ...): re-plan them only
            for member in members:
                owners |= self._replan(member)
        if vni:
            self._subnet_vnis[subnet_id] = vni
        else:
            self._subnet_vnis.pop(subnet_id, None)
        return owners

    # ------------------------------------------------------------------ flows of one owner
    def flows(self, owner: Owner) -> list[Flow]:
        kind, oid = owner
        if kind is Kind.BASE:
            miss = routing.punt_actions(self.route_ofport) if self.route_ofport is not None else ()
            return overlay.base_flows(self.tunnel_ofport, miss) + security.base_flows(
                cookies.cookie(Kind.BASE, "base")
            )
        if kind is Kind.ROUTE:
            vlan = self.route_vlans.get(int(oid))
            if vlan is None or self.route_ofport is None:
                return []
            return [routing.reinject_flow(int(oid), vlan, self.route_ofport)]
        if kind is Kind.PORT:
            port = self.state.ports.get(oid)
            ofport = self.bindings.get(oid)
            if port is None or ofport is None:
                return []
            vni = self.state.segment_of_port(port)
            if not vni:
                return []
            return overlay.port_flows(port, vni, ofport) + self._routes_to_port(port)
        if kind is Kind.NEIGHBOR:
            nb = self.state.neighbors.get(oid)
            if nb is None or self.tunnel_ofport is None or nb.host_ip == self.local_ip:
                return []
            flows = overlay.neighbor_flows(nb, self.state.neighbor_segments(nb), self.tunnel_ofport)
            return flows + self._routes_to_neighbor(nb)
        if kind is Kind.ROUTER:
            return self._router_flows(oid)
        if kind is Kind.DHCP:
            if oid.startswith(dhcp.SUBNET_PREFIX):
                return self._dhcp_server_flows(oid[len(dhcp.SUBNET_PREFIX) :])
            return dhcp.flows(self.state, oid, self.bindings, self.dhcp_ofport)
        if kind is Kind.SECURITY:
            return self.security.flows(oid, self.bindings)
        if kind is Kind.SEGMENT:
            vni = int(oid)
            ports = sorted(self._segment_ports.get(vni, {}).values())
            hosts = sorted(self._segment_hosts.get(vni, {}))
            room = overlay.flood_room(len(ports))
            if len(hosts) > room:  # more would not encode: one message, 64 KiB
                log.warning("event=flood_hosts_left_out vni=%d hosts=%d kept=%d", vni, len(hosts), room)
                hosts = hosts[:room]
            return overlay.flood_flows(vni, ports, hosts, self.tunnel_ofport)
        return []

    def _dhcp_server_flows(self, subnet_id: str) -> list[Flow]:
        """The server id's ARP answer, on a host with a port this subnet's DHCP serves, unless a
        router here answers for the gateway already (one flow per address, one owner)."""
        subnet = self.state.subnets.get(subnet_id)
        if subnet is None or self.dhcp_ofport is None or not subnet.dhcp_enable or not subnet.tunnel_id:
            return []
        if self._subnet_routers.get(subnet_id) and self._router_subnet(subnet_id) is not None:
            return []
        for port_id in self._segment_ports.get(subnet.tunnel_id, ()):
            port = self.state.ports.get(port_id)
            if port is not None and dhcp.served_subnet(self.state, port) == subnet_id:
                return dhcp.server_flows(subnet)
        return []

    # ------------------------------------------------------------------ routing
    def _router_subnet(self, subnet_id: str) -> RouterSubnet | None:
        sn = self.state.subnets.get(subnet_id)
        if sn is None or not sn.gateway_ip or not sn.gateway_mac:
            return None
        return RouterSubnet(sn.id, sn.cidr, sn.tunnel_id, sn.gateway_ip, sn.gateway_mac)

    def _dvr_mac(self, router_id: str) -> str:
        router = self.state.resources[ResourceType.ROUTER].get(router_id)
        return getattr(router, "dvr_mac", "")

    def _targets(self, subnet_id: str, dest: Destination) -> list[RouteTarget]:
        if not self._subnet_routers.get(subnet_id):
            return []  # the common case at scale: a subnet no router of this host serves
        dest_subnet = self._router_subnet(subnet_id)
        if dest_subnet is None:
            return []
        return [
            routing.route_target(rid, self._dvr_mac(rid), dest, dest_subnet.gateway_mac)
            for rid in sorted(self._subnet_routers.get(subnet_id, ()))
        ]

    def _port_targets(self, port: Port) -> list[RouteTarget]:
        if not port.admin_up:
            return []
        targets: list[RouteTarget] = []
        for fip in port.fixed_ips:
            subnet = self.state.subnets.get(fip.subnet_id)
            if subnet is not None:
                targets += self._targets(fip.subnet_id, Destination(fip.ip, port.mac, subnet.tunnel_id, True))
        return targets

    def _neighbor_targets(self, nb: Neighbor) -> list[RouteTarget]:
        if not self._subnet_routers:
            return []
        targets: list[RouteTarget] = []
        for nip, (vni, _ip) in zip(nb.fixed_ips, self.state.neighbor_segments(nb), strict=False):
            targets += self._targets(nip.subnet_id, Destination(nip.ip, nb.mac, vni, False))
        return targets

    def route_targets(self, owner: Owner) -> list[RouteTarget]:
        """The host routes the planner makes for a port or neighbour owner, whatever the routing
        mode (the fast path's destination table); [] for other owners or when it has none."""
        if not self._subnet_routers:
            return []  # no router here: nothing is routed to anyone (asked per owner at a resync)
        kind, oid = owner
        if kind is Kind.PORT:
            port = self.state.ports.get(oid)
            if port is None or oid not in self.bindings or not self.state.segment_of_port(port):
                return []
            return self._port_targets(port)
        if kind is Kind.NEIGHBOR:
            nb = self.state.neighbors.get(oid)
            if nb is None or self.tunnel_ofport is None or nb.host_ip == self.local_ip:
                return []
            return self._neighbor_targets(nb)
        return []

    def _routes_to_port(self, port: Port) -> list[Flow]:
        ck = cookies.cookie(Kind.PORT, port.id)
        return [routing.cache_flow(t, ck, 0) for t in self._port_targets(port)]

    def _routes_to_neighbor(self, nb: Neighbor) -> list[Flow]:
        if self.routing_mode == ON_DEMAND:
            return []  # installed with an idle timeout when the fast path first forwards to it
        targets = self._neighbor_targets(nb)
        if not targets:
            return []
        ck = cookies.cookie(Kind.NEIGHBOR, nb.id)
        return [routing.cache_flow(t, ck, 0) for t in targets]

    def _resolve(self, ip: str) -> tuple[Destination, str] | None:
        """A next-hop IP → the port or neighbour holding it, and its subnet's gateway MAC."""
        for port in self.state.ports.values():
            for fip in port.fixed_ips:
                sn = self._router_subnet(fip.subnet_id)
                if fip.ip == ip and sn is not None and port.id in self.bindings:
                    return Destination(ip, port.mac, sn.vni, True), sn.gateway_mac
        for nb in self.state.neighbors.values():
            for nip in nb.fixed_ips:
                sn = self._router_subnet(nip.subnet_id)
                if nip.ip == ip and sn is not None and nb.host_ip != self.local_ip:
                    return Destination(ip, nb.mac, nip.tunnel_id or sn.vni, False), sn.gateway_mac
        return None

    def _router_flows(self, router_id: str) -> list[Flow]:
        router: Router | None = self.state.resources[ResourceType.ROUTER].get(router_id)  # type: ignore[assignment]
        if router is None:
            return []
        subnets, routes = [], []
        for table in router.subnets:
            sn = self._router_subnet(table.subnet_id)
            if sn is None:
                continue
            subnets.append(sn)
            for rule in table.rules:
                hop = self._resolve(rule.next_hop_ip) if rule.next_hop_ip else None
                if hop is not None:
                    routes.append(StaticRoute(sn, rule.destination, rule.priority, hop[0], hop[1]))
        return routing.gateway_flows(router_id, router.dvr_mac, subnets, routes)

    def is_pending(self, port_id: str) -> bool:
        return port_id in self.state.ports and port_id not in self.bindings
