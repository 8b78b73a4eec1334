"""The desired state the controller asked for, and the rules for changing it.

Plain dicts of frozen resources keyed by id, one per resource type, plus the revision, reference,
address-conflict and tombstone rules of the goal-state contract. Applying a request returns its
status and whether anything changed; the caller (the core) turns changes into planning work, and
``revert`` undoes an apply whose goal state could not be made durable.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from agent.model import claims as c
from agent.model import validate as v
from agent.model.resources import (
    APPLY_ORDER,
    Dhcp,
    Neighbor,
    Op,
    Port,
    Request,
    Resource,
    ResourceType,
    Router,
    Status,
    Subnet,
    SubnetRoutes,
    UpdateType,
)

# At most this many tombstones are kept; beyond it the oldest go. A tombstone only matters while
# a message sent before its DELETE can still arrive (a redelivery, a slower transport: seconds to
# minutes), so it must outlive a burst of deletes, not live forever: 100,000 is twice the largest
# goal state (50,000 neighbours deleted at once) and costs about 20 MB at worst (UUID ids).
MAX_TOMBSTONES = 100_000

# A DELETE at this revision or below leaves no tombstone. Alcor stamps revision_number 1
# (FORMAT_REVISION_NUMBER) on every resource it sends, and sends a port's subnet and VPC with the
# port's own operation: at revision 1 a CREATE after a DELETE is as likely the resource coming
# back (the next port of that subnet, a VM migrating back) as a late message, and refusing it
# would strand it for good. Revision 0 is unversioned by the contract.
UNORDERED_REVISION = 1

_RANK = {t: i for i, t in enumerate(APPLY_ORDER)}
# Enum members as plain names: each ``ResourceType.X`` is an attribute lookup (~80 ns), paid per
# neighbour on the hot path.
_SUBNET, _PORT, _NEIGHBOR = ResourceType.SUBNET, ResourceType.PORT, ResourceType.NEIGHBOR
_ENDPOINTS = (_PORT, _NEIGHBOR)

TombstoneKey = tuple[ResourceType, str]


@dataclass(slots=True)
class Outcome:
    request: Request
    status: Status
    changed: bool = False
    previous: Resource | None = None
    reason: str = ""
    tombstone: int = 0  # the request's resource's tombstone revision before it applied (0: none)
    evicted: tuple[TombstoneKey, int] | None = None  # the oldest tombstone it pushed out


def _application_order(requests: list[Request]) -> list[int]:
    """Creates/updates in dependency order, then deletes in reverse: indexes into ``requests``."""
    upserts: list[list[int]] = [[] for _ in APPLY_ORDER]
    deletes: list[list[int]] = [[] for _ in APPLY_ORDER]
    for i, req in enumerate(requests):
        (deletes if req.op is Op.DELETE else upserts)[_RANK[req.type]].append(i)
    return [i for group in upserts for i in group] + [i for group in reversed(deletes) for i in group]


@dataclass
class DesiredState:
    resources: dict[ResourceType, dict[str, Resource]] = field(
        default_factory=lambda: {t: {} for t in ResourceType}
    )
    # (type, id) -> the revision it was deleted at, oldest first (bounded: MAX_TOMBSTONES)
    tombstones: dict[TombstoneKey, int] = field(default_factory=dict)
    claims: c.AddressClaims = field(init=False, repr=False)

    def __post_init__(self) -> None:
        """Index what was loaded (store rows): unchecked, so stored overlaps are kept, not dropped."""
        self.claims = c.AddressClaims()
        for rtype in _ENDPOINTS:
            for rid, res in self.resources[rtype].items():
                self.claims.hold((rtype, rid), res, self.subnets)  # type: ignore[arg-type]
        while len(self.tombstones) > MAX_TOMBSTONES:
            del self.tombstones[next(iter(self.tombstones))]

    def get(self, rtype: ResourceType, rid: str) -> Resource | None:
        return self.resources[rtype].get(rid)

    @property
    def subnets(self) -> dict[str, Subnet]:
        return self.resources[_SUBNET]  # type: ignore[return-value]

    @property
    def ports(self) -> dict[str, Port]:
        return self.resources[_PORT]  # type: ignore[return-value]

    @property
    def neighbors(self) -> dict[str, Neighbor]:
        return self.resources[_NEIGHBOR]  # type: ignore[return-value]

    def count(self) -> dict[str, int]:
        return {t.name.lower(): len(items) for t, items in self.resources.items()}

    # ------------------------------------------------------------------ apply
    def apply(self, requests: list[Request]) -> list[Outcome]:
        """Apply a message's requests: creates/updates in dependency order, then deletes in reverse.

        Outcomes come back in the order of ``requests``.
        """
        outcomes: list[Outcome | None] = [None] * len(requests)
        # Endpoints this message deletes give up their addresses to a resource it creates.
        leaving = {(r.type, r.id) for r in requests if r.op is Op.DELETE and r.type in _ENDPOINTS}
        for i in _application_order(requests):
            req = requests[i]
            outcomes[i] = outcome = self._apply_one(req, leaving)
            if req.partial and outcome.status is Status.SUCCESS:  # held and applied, partly enforced
                outcome.status, outcome.reason = Status.INVALID_ARG, req.partial
        return outcomes  # type: ignore[return-value]

    def revert(self, outcomes: list[Outcome]) -> None:
        """Undo the ``apply`` that returned ``outcomes`` (all of them, in the order it returned
        them): resources, address claims and tombstones are as before it. Only for the last apply
        (a later one may have built on it): for the core when the goal state could not be made
        durable, so that a resend is a change again and gets programmed."""
        for i in reversed(_application_order([o.request for o in outcomes])):
            outcome = outcomes[i]
            if not outcome.changed:
                continue
            req = outcome.request
            self._put(req.type, req.id, outcome.previous)
            key = (req.type, req.id)
            if outcome.tombstone:
                self.tombstones[key] = outcome.tombstone
            else:
                self.tombstones.pop(key, None)
            if outcome.evicted is not None:
                evicted_key, revision = outcome.evicted
                self.tombstones = {evicted_key: revision, **self.tombstones}  # back in first place

    def _apply_one(self, req: Request, leaving: set[c.Holder]) -> Outcome:
        if req.error:
            return Outcome(req, Status.INVALID_ARG, reason=req.error)
        table = self.resources[req.type]
        held = table.get(req.id)
        if req.op is Op.DELETE:
            return self._delete(req, held)
        new = req.resource
        assert new is not None
        if held is not None and new.revision and held.revision > new.revision:
            if not req.acted_on:
                return Outcome(req, Status.SUCCESS)  # stale context: keep what we hold
            return Outcome(
                req, Status.OUT_OF_ORDER, previous=held,
                reason=f"revision {new.revision} is older than held {held.revision}",
            )  # fmt: skip
        tombstone = self.tombstones.get((req.type, req.id), 0) if self.tombstones else 0
        if tombstone and new.revision and new.revision <= tombstone:
            if not req.acted_on:
                return Outcome(req, Status.SUCCESS)  # stale context of a deleted resource
            return Outcome(
                req, Status.OUT_OF_ORDER, tombstone=tombstone,
                reason=f"revision {new.revision} is not newer than its tombstone (deleted at {tombstone})",
            )  # fmt: skip
        if held is not None and req.op is Op.UPDATE and req.update_type is UpdateType.DELTA:
            new = _merge_router(held, new) if isinstance(new, Router) else _merge(held, new)  # type: ignore[arg-type]
        elif isinstance(new, Router):
            new = replace(new, subnets=tuple(replace(t, removed_rule_ids=()) for t in new.subnets))
        try:
            self._check_references(new)
        except v.Invalid as exc:
            return Outcome(req, Status.INVALID_ARG, reason=str(exc))
        if held == new:
            return Outcome(req, Status.SUCCESS, previous=held)
        conflict = self._upsert(req, held, new, leaving)
        if conflict:
            return Outcome(req, Status.INVALID_ARG, reason=conflict)
        if tombstone:
            del self.tombstones[(req.type, req.id)]
        return Outcome(req, Status.SUCCESS, changed=True, previous=held, tombstone=tombstone)

    def _delete(self, req: Request, held: Resource | None) -> Outcome:
        """Remove what is held and leave a tombstone at the DELETE's revision (else the held one),
        so a message older than the DELETE cannot bring the resource back."""
        key = (req.type, req.id)
        before = self.tombstones.get(key, 0)
        revision = req.revision or (held.revision if held is not None else 0)
        revision = max(revision if revision > UNORDERED_REVISION else 0, before)
        if held is not None:
            self._put(req.type, req.id, None)
        elif revision == before:
            return Outcome(req, Status.SUCCESS, tombstone=before)
        evicted = None
        if revision:
            self.tombstones[key] = revision
            if len(self.tombstones) > MAX_TOMBSTONES:
                oldest = next(iter(self.tombstones))
                evicted = (oldest, self.tombstones.pop(oldest))
        return Outcome(req, Status.SUCCESS, changed=True, previous=held, tombstone=before, evicted=evicted)

    # ------------------------------------------------------------------ the held tables and their indexes
    def _upsert(self, req: Request, held: Resource | None, new: Resource, leaving: set[c.Holder]) -> str:
        """Hold ``new``; a port or neighbour only if its addresses are free (else the reason)."""
        rtype, rid = req.type, req.id
        if rtype is not _PORT and rtype is not _NEIGHBOR:
            self._put(rtype, rid, new)
            return ""
        holder = (rtype, rid)
        subnets = self.resources[_SUBNET]
        if held is not None:
            self.claims.release(holder, held, subnets)  # type: ignore[arg-type]
        taken = self.claims.claim(holder, new, subnets, leaving)  # type: ignore[arg-type]
        if taken is not None:
            if held is not None:
                self.claims.hold(holder, held, subnets)  # type: ignore[arg-type]
            key, (holder_type, holder_id) = taken
            return f"{c.describe(key)} is held by {holder_type.name.lower()} {holder_id}"
        self.resources[rtype][rid] = new
        return ""

    def _put(self, rtype: ResourceType, rid: str, res: Resource | None) -> None:
        """Hold ``res`` (None: nothing) unchecked, keeping the address claims in step (delete, revert)."""
        table = self.resources[rtype]
        held = table.get(rid)
        if rtype is _SUBNET:
            self._put_subnet(rid, held, res)  # type: ignore[arg-type]
            return
        if rtype is _PORT or rtype is _NEIGHBOR:
            holder = (rtype, rid)
            if held is not None:
                self.claims.release(holder, held, self.subnets)  # type: ignore[arg-type]
            if res is not None:
                self.claims.hold(holder, res, self.subnets)  # type: ignore[arg-type]
        if res is None:
            table.pop(rid, None)
        else:
            table[rid] = res

    def _put_subnet(self, rid: str, held: Subnet | None, new: Subnet | None) -> None:
        """A subnet whose VNI changes (created, deleted, renumbered) moves its members' claims."""
        old_vni = held.tunnel_id if held is not None else 0
        new_vni = new.tunnel_id if new is not None else 0
        moving = self.claims.members(rid) if old_vni != new_vni else []
        members = [(holder, self.resources[holder[0]][holder[1]]) for holder in moving]
        for holder, res in members:
            self.claims.release(holder, res, self.subnets)  # type: ignore[arg-type]
        if new is None:
            self.subnets.pop(rid, None)
        else:
            self.subnets[rid] = new
        for holder, res in members:
            self.claims.hold(holder, res, self.subnets)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ references
    def _subnet(self, subnet_id: str, owner: str) -> Subnet:
        subnet = self.subnets.get(subnet_id)
        if subnet is None:
            raise v.Invalid(f"{owner} references unknown subnet {subnet_id!r}")
        return subnet

    def _check_references(self, res: Resource) -> None:
        if isinstance(res, Port):
            for fip in res.fixed_ips:
                subnet = self._subnet(fip.subnet_id, "fixed ip")
                if not v.in_cidr(fip.ip, subnet.cidr):
                    raise v.Invalid(f"fixed ip {fip.ip} is outside subnet {subnet.id} ({subnet.cidr})")
                if fip.ip == subnet.gateway_ip:
                    raise v.Invalid(
                        f"ip {fip.ip} in VNI {subnet.tunnel_id} is the gateway of subnet {subnet.id}"
                    )
        elif isinstance(res, Neighbor):  # per neighbour of the biggest goal states: inline lookups
            subnets = self.subnets
            for nip in res.fixed_ips:
                if not nip.tunnel_id and nip.subnet_id not in subnets:
                    self._subnet(nip.subnet_id, "neighbor fixed ip")
        elif isinstance(res, Dhcp):
            subnet = self._subnet(res.subnet_id, "dhcp entry")
            if res.ipv4 and not v.in_cidr(res.ipv4, subnet.cidr):
                raise v.Invalid(f"dhcp ipv4 {res.ipv4} is outside subnet {subnet.id} ({subnet.cidr})")
        elif isinstance(res, Router):
            for table in res.subnets:
                self._subnet(table.subnet_id, "router")

    # ------------------------------------------------------------------ lookups for the planner
    def segment_of_port(self, port: Port) -> int:
        """The VNI a port's traffic lives in: its first fixed IP's subnet, else its VPC's."""
        for fip in port.fixed_ips:
            subnet = self.subnets.get(fip.subnet_id)
            if subnet is not None:
                return subnet.tunnel_id
        vpc = self.resources[ResourceType.VPC].get(port.vpc_id)
        return getattr(vpc, "tunnel_id", 0)

    def neighbor_segments(self, nb: Neighbor) -> list[tuple[int, str]]:
        """(VNI, ip) for each fixed IP of a neighbour."""
        out = []
        for nip in nb.fixed_ips:
            vni = nip.tunnel_id
            if not vni:
                subnet = self.subnets.get(nip.subnet_id)
                vni = subnet.tunnel_id if subnet else 0
            if vni:
                out.append((vni, nip.ip))
        return out


def _merge(held: Resource, update: Resource) -> Resource:
    """DELTA update: fields the update leaves empty keep the held value."""
    changes = {}
    for f in fields(update):  # type: ignore[arg-type]
        value = getattr(update, f.name)
        if isinstance(value, bool) or value not in ("", 0, (), None):
            changes[f.name] = value
    return replace(held, **changes)  # type: ignore[type-var]


def _merge_router(held: Router, update: Router) -> Router:
    """DELTA router: per subnet, and inside a subnet per rule (each rule has its own operation).

    Subnets the update names are merged into (new ones added), rules are upserted by id or
    removed when the update deletes them; subnets it does not name stay as they are.
    """
    tables = {t.subnet_id: t for t in held.subnets}
    for table in update.subnets:
        old = tables.get(table.subnet_id)
        rules = {r.id: r for r in (old.rules if old else ())}
        for rule_id in table.removed_rule_ids:
            rules.pop(rule_id, None)
        rules.update({r.id: r for r in table.rules})
        tables[table.subnet_id] = SubnetRoutes(table.subnet_id, tuple(rules.values()))
    return replace(
        held, revision=update.revision, dvr_mac=update.dvr_mac or held.dvr_mac, subnets=tuple(tables.values())
    )
