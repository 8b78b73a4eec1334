"""Which security owners a change touches: the planner's indexes for security groups.

Kept apart from ``plan.py``: members (ports, and neighbours naming groups) → groups, groups →
members, groups → the remote groups their rules name, and each group's slot (its priorities and
conj_id). A port's change touches its own owner, its groups' rule owners on it and the shared
member flows of its old and new groups; a group's change touches its rule owner on each port
using it, and the remote groups it starts or stops naming.
"""

from __future__ import annotations

from collections import defaultdict

from agent.model.resources import Neighbor, Port, ResourceType, SecurityGroup
from agent.model.state import DesiredState
from agent.planner import cookies, security
from agent.planner.cookies import Kind
from agent.planner.flows import Flow
from agent.planner.pipeline import SG_SLOTS

Owner = tuple[Kind, str]
Member = tuple[ResourceType, str]  # a port, or a neighbour whose controller named its groups
_NONE: frozenset = frozenset()


class SecurityIndex:
    def __init__(self, state: DesiredState) -> None:
        self.state = state
        self._member_groups: dict[Member, frozenset[str]] = {}  # port or neighbour → its groups
        self._group_members: dict[str, set[Member]] = defaultdict(set)  # group → its members
        self._remotes: dict[str, frozenset[tuple[str, int]]] = {}  # group → (remote group, direction)
        self._users: dict[str, set[str]] = defaultdict(set)  # remote group → groups naming it
        self._listed: dict[str, tuple[str, ...]] = {}  # group → the member addresses it lists (ext. 101)
        self.slots: dict[str, int] = {}  # group held or named as remote → its slot
        self._taken: set[int] = set()

    @property
    def _groups(self) -> dict[str, SecurityGroup]:
        return self.state.resources[ResourceType.SECURITYGROUP]  # type: ignore[return-value]

    def reset(self) -> None:
        """Forget everything and index every group again, in id order so that slots come out the
        same at every start; ports are indexed as the planner touches them."""
        self._member_groups.clear()
        self._group_members.clear()
        self._remotes.clear()
        self._users.clear()
        self._listed.clear()
        self.slots.clear()
        self._taken.clear()
        for gid in sorted(self._groups):
            self.group_changed(gid)

    def owners(self) -> set[Owner]:
        owners = {security.port_owner(p) for p in self.state.ports}
        owners |= {security.remote_owner(g) for g in self._users}
        for (rtype, rid), groups in self._member_groups.items():
            if rtype is ResourceType.PORT:
                owners |= {security.rules_owner(rid, g) for g in groups}
        return owners

    def port_changed(self, port_id: str, port: Port | None) -> set[Owner]:
        """A port changed (groups, addresses, binding): its rule owners of its old and new groups,
        and those groups' member flows (where named as remote)."""
        old = self._member_groups.get((ResourceType.PORT, port_id), _NONE)
        owners = self._member_changed((ResourceType.PORT, port_id), port)
        new = frozenset(port.security_group_ids) if port is not None else _NONE
        return owners | {security.rules_owner(port_id, g) for g in old | new}

    def neighbor_changed(self, nb_id: str, nb: Neighbor | None) -> set[Owner]:
        """The same for a port on another host (groups from the extension field, else none)."""
        member = (ResourceType.NEIGHBOR, nb_id)
        if (nb is None or not nb.security_group_ids) and member not in self._member_groups:
            return set()  # the common case (upstream never names a neighbour's groups): no index work
        return self._member_changed(member, nb)

    def _member_changed(self, member: Member, held: Port | Neighbor | None) -> set[Owner]:
        new = frozenset(held.security_group_ids) if held is not None else _NONE
        old = self._member_groups.pop(member, _NONE)
        for gid in old - new:
            self._group_members[gid].discard(member)
            if not self._group_members[gid]:
                del self._group_members[gid]
        for gid in new - old:
            self._group_members[gid].add(member)
        if new:
            self._member_groups[member] = new
        return {security.remote_owner(g) for g in old | new if g in self._users}

    def group_changed(self, group_id: str) -> set[Owner]:
        """A group's rules changed: its rules on each port using it, the remote groups it starts
        or stops naming (in a direction), and its own member flows when the addresses it lists
        as members (extension field 101) changed."""
        group = self._groups.get(group_id)
        new = (
            frozenset((r.remote_group_id, r.direction) for r in group.rules if r.remote_group_id)
            if group
            else _NONE
        )
        old = self._remotes.pop(group_id, _NONE)
        if new:
            self._remotes[group_id] = new
        for remote in {g for g, _d in old} - {g for g, _d in new}:
            self._users[remote].discard(group_id)
            if not self._users[remote]:
                del self._users[remote]
                self._release(remote)
        for remote in sorted({g for g, _d in new} - {g for g, _d in old}):
            self._users[remote].add(group_id)
            self._allocate(remote)
        if group is None:
            self._release(group_id)
        else:
            self._allocate(group_id)
        owners = {
            security.rules_owner(rid, group_id)
            for rtype, rid in self._group_members.get(group_id, ())
            if rtype is ResourceType.PORT
        }
        owners |= {security.remote_owner(g) for g, _d in old ^ new}  # a direction more or less
        listed = group.member_ips if group is not None else ()
        if self._listed.pop(group_id, ()) != listed:
            owners.add(security.remote_owner(group_id))  # its listed members changed
        if listed:
            self._listed[group_id] = listed
        return owners

    def _allocate(self, group_id: str) -> None:
        """A slot from the group id's hash, the next free one on a collision (rare: then the
        slots depend on arrival order and a restart may re-plan those two groups' flows)."""
        if group_id in self.slots or len(self._taken) >= SG_SLOTS:
            return  # held, or none left: that group's rules allow nothing
        slot = cookies.object_id(group_id) % SG_SLOTS
        while slot in self._taken:
            slot = (slot + 1) % SG_SLOTS
        self.slots[group_id] = slot
        self._taken.add(slot)

    def _release(self, group_id: str) -> None:
        """Free a group's slot once it is neither held nor named as remote."""
        if group_id in self.slots and group_id not in self._groups and group_id not in self._users:
            self._taken.discard(self.slots.pop(group_id))

    def remote_flows(self, group_id: str) -> list[Flow]:
        slot = self.slots.get(group_id)
        if slot is None or group_id not in self._users:
            return []
        directions = {
            d for user in self._users.get(group_id, ()) for g, d in self._remotes[user] if g == group_id
        }
        addresses = [ip if "/" in ip else f"{ip}/32" for ip in self._listed.get(group_id, ())]
        for rtype, rid in self._group_members.get(group_id, ()):
            held = self.state.resources[rtype].get(rid)
            if held is not None:
                addresses += security.member_addresses(held)  # type: ignore[arg-type]
        return security.remote_flows(group_id, slot, directions, addresses)

    def _bound(self, port_id: str, ofport: int | None) -> tuple[Port, int, int] | None:
        """(port, ofport, VNI) of a bound, enabled port with groups, else None."""
        port = self.state.ports.get(port_id)
        if port is None or ofport is None or not port.admin_up or not port.security_group_ids:
            return None
        vni = self.state.segment_of_port(port)
        return (port, ofport, vni) if vni else None

    def port_flows(self, port_id: str, ofport: int | None) -> list[Flow]:
        bound = self._bound(port_id, ofport)
        if bound is None:
            return []
        port, ofport, vni = bound
        gateways = []
        for fip in port.fixed_ips:
            sn = self.state.subnets.get(fip.subnet_id)
            if sn is not None and sn.gateway_ip and sn.gateway_mac and ":" not in sn.gateway_ip:
                gateways.append(security.Gateway(sn.gateway_ip, sn.gateway_mac))
        return security.port_flows(port, ofport, vni, gateways)

    def rules_flows(self, port_id: str, group_id: str, ofport: int | None) -> list[Flow]:
        bound = self._bound(port_id, ofport)
        group = self._groups.get(group_id)
        if bound is None or group is None or group_id not in bound[0].security_group_ids:
            return []
        port, ofport, vni = bound
        return security.group_flows(port_id, ofport, vni, port.mac, group, self.slots)

    def flows(self, oid: str, bindings: dict[str, int]) -> list[Flow]:
        if oid.startswith(security.REMOTE_PREFIX):
            return self.remote_flows(oid[len(security.REMOTE_PREFIX) :])
        if oid.startswith(security.RULES_PREFIX):
            port_id, _, group_id = oid[len(security.RULES_PREFIX) :].rpartition("/")
            return self.rules_flows(port_id, group_id, bindings.get(port_id))
        port_id = oid[len(security.PORT_PREFIX) :]
        return self.port_flows(port_id, bindings.get(port_id))
