"""The desired state the controller asked for, and the rules for changing it.

Plain dicts of frozen resources keyed by id, one per resource type, plus the revision and
reference rules of the goal-state contract. Applying a request returns its status and
whether anything changed; the caller (the core) turns changes into planning work.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

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


@dataclass(slots=True)
class Outcome:
    request: Request
    status: Status
    changed: bool = False
    previous: Resource | None = None
    reason: str = ""


@dataclass
class DesiredState:
    resources: dict[ResourceType, dict[str, Resource]] = field(
        default_factory=lambda: {t: {} for t in ResourceType}
    )

    def get(self, rtype: ResourceType, rid: str) -> Resource | None:
        return self.resources[rtype].get(rid)

    @property
    def subnets(self) -> dict[str, Subnet]:
        return self.resources[ResourceType.SUBNET]  # type: ignore[return-value]

    @property
    def ports(self) -> dict[str, Port]:
        return self.resources[ResourceType.PORT]  # type: ignore[return-value]

    @property
    def neighbors(self) -> dict[str, Neighbor]:
        return self.resources[ResourceType.NEIGHBOR]  # type: ignore[return-value]

    def count(self) -> dict[str, int]:
        return {t.name.lower(): len(items) for t, items in self.resources.items()}

    # ------------------------------------------------------------------ apply
    def apply(self, requests: list[Request]) -> list[Outcome]:
        """Apply a message's requests: creates/updates in dependency order, then deletes in reverse.

        Outcomes come back in the order of ``requests``.
        """
        outcomes: dict[int, Outcome] = {}
        rank = {t: i for i, t in enumerate(APPLY_ORDER)}
        indexed = list(enumerate(requests))
        upserts = sorted((p for p in indexed if p[1].op is not Op.DELETE), key=lambda p: rank[p[1].type])
        deletes = sorted((p for p in indexed if p[1].op is Op.DELETE), key=lambda p: -rank[p[1].type])
        for i, req in upserts + deletes:
            outcomes[i] = outcome = self._apply_one(req)
            if req.partial and outcome.status is Status.SUCCESS:  # held and applied, partly enforced
                outcome.status, outcome.reason = Status.INVALID_ARG, req.partial
        return [outcomes[i] for i in range(len(requests))]

    def _apply_one(self, req: Request) -> Outcome:
        if req.error:
            return Outcome(req, Status.INVALID_ARG, reason=req.error)
        table = self.resources[req.type]
        held = table.get(req.id)
        if req.op is Op.DELETE:
            if held is None:
                return Outcome(req, Status.SUCCESS)
            del table[req.id]
            return Outcome(req, Status.SUCCESS, changed=True, previous=held)
        new = req.resource
        assert new is not None
        if held is not None and new.revision and held.revision > new.revision:
            if not req.acted_on:
                return Outcome(req, Status.SUCCESS)  # stale context: keep what we hold
            return Outcome(
                req, Status.OUT_OF_ORDER, previous=held,
                reason=f"revision {new.revision} is older than held {held.revision}",
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
        table[req.id] = new
        return Outcome(req, Status.SUCCESS, changed=True, previous=held)

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
        elif isinstance(res, Neighbor):
            for nip in res.fixed_ips:
                if not nip.tunnel_id:
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
