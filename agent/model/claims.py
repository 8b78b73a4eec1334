"""Which endpoint holds each (VNI, IP) and (VNI, MAC) of the desired state.

Two endpoints with one address in one segment overwrite each other's flows (the L2 lookup, the
ARP answer), so the state rejects the later one; this index makes the check a dict lookup per
address, whatever the number of neighbours held. An endpoint is a port or neighbour *id*: a port
of this host is also sent as a neighbour with the same id, which is the same endpoint, not a
conflict. Allowed-address pairs are not claims (VRRP shares them).

A fixed IP claims its address and the endpoint's MAC in the VNI of its subnet (a neighbour's own
``tunnel_id`` when it carries one). The index is a function of what is held: each key's holders
are kept sorted, and ``members`` lets a subnet whose VNI changes move its members' claims; so
putting a previous resource back restores the index exactly (``DesiredState.revert``). Holders
that came to share a key without being checked (a subnet moved into a segment where the address
is taken, or rows stored before this check) are all kept, and each keeps its claim.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping

from agent.model.resources import Neighbor, Port, ResourceType, Subnet

Key = tuple[int, str]  # (VNI, IPv4 address or MAC): the two never look alike
Holder = tuple[ResourceType, str]  # (PORT or NEIGHBOR, id)


def endpoint_keys(res: Port | Neighbor, subnets: Mapping[str, Subnet]) -> tuple[list[Key], list[str]]:
    """A port's or neighbour's claim keys, and the subnets whose VNI they depend on (members).

    One pass with no helper calls: it runs for every neighbour of a 50,000-neighbour goal state.
    """
    neighbor = isinstance(res, Neighbor)
    fixed_ips = res.fixed_ips
    if len(fixed_ips) == 1:  # the common case, without the list bookkeeping
        (fip,) = fixed_ips
        vni = fip.tunnel_id if neighbor else 0  # type: ignore[union-attr]
        if vni:
            return [(vni, fip.ip), (vni, res.mac)], []
        subnet = subnets.get(fip.subnet_id)
        if subnet is None or not subnet.tunnel_id:
            return [], [fip.subnet_id]
        vni = subnet.tunnel_id
        return [(vni, fip.ip), (vni, res.mac)], [fip.subnet_id]
    keys: list[Key] = []
    sids: list[str] = []
    mac = res.mac
    for fip in fixed_ips:
        vni = fip.tunnel_id if neighbor else 0  # type: ignore[union-attr]  # a neighbour's may be given
        if not vni:
            sid = fip.subnet_id
            if sid not in sids:
                sids.append(sid)
            subnet = subnets.get(sid)
            if subnet is None or not subnet.tunnel_id:
                continue
            vni = subnet.tunnel_id
        for key in ((vni, fip.ip), (vni, mac)):
            if key not in keys:
                keys.append(key)
    return keys, sids


def describe(key: Key) -> str:
    vni, address = key
    return f"{'mac' if ':' in address else 'ip'} {address} in VNI {vni}"


class AddressClaims:
    def __init__(self) -> None:
        # VNI -> address -> its smallest holder: nested so that the hot path hashes strings (their
        # hash is cached) rather than building and hashing a (VNI, address) tuple per lookup
        self._holder: dict[int, dict[str, Holder]] = {}
        self._more: dict[Key, list[Holder]] = {}  # the other holders, sorted: a neighbour twin, overlaps
        self._members: dict[str, set[Holder]] = {}  # subnet id -> endpoints whose claims use its VNI

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AddressClaims):
            return NotImplemented
        return (self._holder, self._more, self._members) == (other._holder, other._more, other._members)

    def holders(self, key: Key) -> list[Holder]:
        first = self._holder.get(key[0], {}).get(key[1])
        if first is None:
            return []
        return [first, *self._more.get(key, ())]

    def claim(
        self,
        holder: Holder,
        res: Port | Neighbor,
        subnets: Mapping[str, Subnet],
        leaving: set[Holder] | None,
    ) -> tuple[Key, Holder] | None:
        """``holder`` (which holds nothing yet) claims ``res``'s addresses, unless another endpoint
        holds one of them (``leaving`` ones excepted): then nothing changes and that key and
        holder come back. ``leaving`` None: unchecked (``hold``)."""
        fixed_ips = res.fixed_ips
        if len(fixed_ips) == 1 and not getattr(fixed_ips[0], "tunnel_id", 0):
            # Most endpoints, inline: one fixed IP in a subnet, both addresses free.
            sid = fixed_ips[0].subnet_id
            subnet = subnets.get(sid)
            if subnet is not None and subnet.tunnel_id:
                in_vni = self._holder.get(subnet.tunnel_id)
                ip, mac = fixed_ips[0].ip, res.mac
                if in_vni is None or (ip not in in_vni and mac not in in_vni):
                    if in_vni is None:
                        in_vni = self._holder[subnet.tunnel_id] = {}
                    in_vni[ip] = in_vni[mac] = holder
                    members = self._members.get(sid)
                    if members is None:
                        self._members[sid] = {holder}
                    else:
                        members.add(holder)
                    return None
        keys, sids = endpoint_keys(res, subnets)
        if leaving is not None:
            rid = holder[1]
            for key in keys:
                other = next((h for h in self.holders(key) if h[1] != rid and h not in leaving), None)
                if other is not None:
                    return key, other
        self._hold(holder, keys, sids)
        return None

    def hold(self, holder: Holder, res: Port | Neighbor, subnets: Mapping[str, Subnet]) -> None:
        """Claim unchecked: what was stored, or moved by its subnet, is kept even if shared."""
        self.claim(holder, res, subnets, None)

    def release(self, holder: Holder, res: Port | Neighbor, subnets: Mapping[str, Subnet]) -> None:
        """Give up what ``hold``/``claim`` took for ``res`` (with the same subnets)."""
        first_of, more = self._holder, self._more
        keys, sids = endpoint_keys(res, subnets)
        for key in keys:
            vni, address = key
            in_vni = first_of[vni]
            rest = more.get(key)
            if rest is None:
                del in_vni[address]
                if not in_vni:
                    del first_of[vni]
                continue
            if in_vni[address] == holder:
                in_vni[address] = rest.pop(0)
            else:
                rest.remove(holder)
            if not rest:
                del more[key]
        members = self._members
        for sid in sids:
            group = members[sid]
            group.discard(holder)
            if not group:
                del members[sid]

    def _hold(self, holder: Holder, keys: list[Key], sids: list[str]) -> None:
        first_of = self._holder
        for key in keys:
            vni, address = key
            in_vni = first_of.get(vni)
            if in_vni is None:
                in_vni = first_of[vni] = {}
            first = in_vni.setdefault(address, holder)
            if first is not holder:  # shared: keep every holder, sorted
                if holder < first:
                    in_vni[address], first = holder, first
                else:
                    first = holder
                insort(self._more.setdefault(key, []), first)
        self._join(holder, sids)

    def _join(self, holder: Holder, sids: list[str]) -> None:
        members = self._members
        for sid in sids:
            group = members.get(sid)
            if group is None:
                members[sid] = {holder}
            else:
                group.add(holder)

    def members(self, subnet_id: str) -> list[Holder]:
        return sorted(self._members.get(subnet_id, ()))
