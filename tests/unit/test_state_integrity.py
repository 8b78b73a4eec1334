"""Desired-state integrity: address conflicts, tombstones, and undoing an apply (``revert``)."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from agent.model import state as state_module
from agent.model import store as store_module
from agent.model.decode import Wire, decode_v2, decode_wire
from agent.model.resources import ResourceType, Status
from agent.model.state import DesiredState
from agent.model.store import Store, recover
from agent.sandbox import goalstates as gs

HOST = "172.31.0.11"
REMOTE = "172.31.0.12"
MAC = "fa:16:3e:00:00:{:02x}"


def _base(vni: int = 100) -> tuple:
    return (gs.vpc("v1", vni), gs.subnet("s1", "v1", "10.0.1.0/24", vni, "10.0.1.1", MAC.format(1)))


def _run(state: DesiredState, *states: Any) -> dict[str, tuple[Status, str]]:
    outcomes = state.apply(decode_v2(gs.goal_state_v2(*states, host_ip=HOST), HOST))
    return {
        f"{o.request.type.name.lower()}:{o.request.id}": (o.status, o.reason)
        for o in outcomes
        if o.request.acted_on
    }


def _status(state: DesiredState, *states: Any) -> dict[str, Status]:
    return {k: status for k, (status, _reason) in _run(state, *states).items()}


def _neighbor_in_vni(nb_id: str, ip: str, mac: str, vni: int) -> Any:
    """A neighbour naming its VNI itself (``tunnel_id``), so it does not follow a subnet."""
    nb = gs.neighbor(nb_id, "v1", "", ip, mac, REMOTE)
    nb.configuration.fixed_ips[0].tunnel_id = vni
    return nb


# ---------------------------------------------------------------- conflicts
def test_second_claim_of_an_ip_or_mac_is_rejected_naming_the_holder() -> None:
    state = DesiredState()
    assert _status(state, *_base(), gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5)))["port:p-1"] is (
        Status.SUCCESS
    )
    result = _run(
        state,
        gs.port("p-2", "v1", "s1", "10.0.1.5", MAC.format(6)),
        gs.neighbor("n-3", "v1", "s1", "10.0.1.7", MAC.format(5), REMOTE),
    )
    assert result["port:p-2"] == (Status.INVALID_ARG, "ip 10.0.1.5 in VNI 100 is held by port p-1")
    assert result["neighbor:n-3"] == (
        Status.INVALID_ARG,
        f"mac {MAC.format(5)} in VNI 100 is held by port p-1",
    )
    assert set(state.ports) == {"p-1"} and state.neighbors == {}


def test_a_port_and_its_neighbour_twin_are_one_endpoint() -> None:
    """Alcor sends a port of this host again as a neighbour with the same id: not a conflict,
    and removing either one leaves the address held by the other."""
    state = DesiredState()
    port = gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5))
    twin = gs.neighbor("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), HOST)
    assert set(_status(state, *_base(), port, twin).values()) == {Status.SUCCESS}
    _status(state, gs.neighbor("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), HOST, op=gs.DELETE, revision=0))
    assert _run(state, gs.port("p-2", "v1", "s1", "10.0.1.5", MAC.format(6)))["port:p-2"] == (
        Status.INVALID_ARG,
        "ip 10.0.1.5 in VNI 100 is held by port p-1",
    )


def test_an_endpoint_may_change_its_own_addresses_and_frees_the_old_ones() -> None:
    state = DesiredState()
    _status(state, *_base(), gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5)))
    moved = gs.port("p-1", "v1", "s1", "10.0.1.9", MAC.format(9), op=gs.UPDATE, revision=2)
    assert _status(state, moved)["port:p-1"] is Status.SUCCESS
    assert _status(state, gs.port("p-2", "v1", "s1", "10.0.1.5", MAC.format(5)))["port:p-2"] is Status.SUCCESS


def test_allowed_address_pairs_are_shared_not_claimed() -> None:
    state = DesiredState()
    vip = [("10.0.1.100", "")]
    statuses = _status(
        state,
        *_base(),
        gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), pairs=vip),
        gs.port("p-2", "v1", "s1", "10.0.1.6", MAC.format(6), pairs=vip),
    )
    assert set(statuses.values()) == {Status.SUCCESS}


def test_the_gateway_ip_is_not_a_port_address() -> None:
    state = DesiredState()
    result = _run(state, *_base(), gs.port("p-1", "v1", "s1", "10.0.1.1", MAC.format(5)))
    assert result["port:p-1"] == (Status.INVALID_ARG, "ip 10.0.1.1 in VNI 100 is the gateway of subnet s1")


def test_the_same_address_in_another_segment_is_no_conflict() -> None:
    state = DesiredState()
    statuses = _status(
        state,
        *_base(),
        gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5)),
        _neighbor_in_vni("n-1", "10.0.1.5", MAC.format(5), 200),
    )
    assert set(statuses.values()) == {Status.SUCCESS}


def test_a_delete_releases_the_claims_also_inside_one_message() -> None:
    state = DesiredState()
    _status(state, *_base(), gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5)))
    # the replacement comes first in the message, the delete of the old holder after it
    statuses = _status(
        state,
        gs.port("p-2", "v1", "s1", "10.0.1.5", MAC.format(5)),
        gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), op=gs.DELETE, revision=0),
    )
    assert statuses == {"port:p-2": Status.SUCCESS, "port:p-1": Status.SUCCESS}
    assert set(state.ports) == {"p-2"}
    _status(state, gs.port("p-2", "v1", "s1", "10.0.1.5", MAC.format(5), op=gs.DELETE, revision=0))
    assert _status(state, gs.port("p-3", "v1", "s1", "10.0.1.5", MAC.format(5)))["port:p-3"] is Status.SUCCESS


def test_a_subnet_changing_vni_moves_its_members_claims() -> None:
    state = DesiredState()
    _status(state, *_base(), gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5)))
    renumbered = gs.subnet(
        "s1", "v1", "10.0.1.0/24", 200, "10.0.1.1", MAC.format(1), op=gs.UPDATE, revision=2
    )
    _status(state, renumbered)
    statuses = _status(
        state,
        _neighbor_in_vni("n-100", "10.0.1.5", MAC.format(5), 100),
        _neighbor_in_vni("n-200", "10.0.1.5", MAC.format(7), 200),
    )
    assert statuses == {"neighbor:n-100": Status.SUCCESS, "neighbor:n-200": Status.INVALID_ARG}


# ---------------------------------------------------------------- tombstones
def test_a_late_create_does_not_revive_a_deleted_resource() -> None:
    state = DesiredState()
    _status(state, *_base(), gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), revision=3))
    _status(state, gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), op=gs.DELETE, revision=5))
    assert state.tombstones == {(ResourceType.PORT, "p-1"): 5}
    late = _run(state, gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), revision=5))
    assert late["port:p-1"] == (
        Status.OUT_OF_ORDER,
        "revision 5 is not newer than its tombstone (deleted at 5)",
    )
    assert state.ports == {}
    assert _status(state, gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), revision=6))["port:p-1"] is (
        Status.SUCCESS
    )
    assert state.tombstones == {}  # held again: its revision rules from here


def test_delete_without_revision_keeps_the_held_one_and_unknown_deletes_leave_theirs() -> None:
    state = DesiredState()
    _status(state, *_base(), gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), revision=3))
    _status(state, gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), op=gs.DELETE, revision=0))
    # the DELETE overtook its CREATE: still remembered
    _status(
        state, gs.neighbor("n-1", "v1", "s1", "10.0.1.6", MAC.format(6), REMOTE, op=gs.DELETE, revision=4)
    )
    assert state.tombstones == {(ResourceType.PORT, "p-1"): 3, (ResourceType.NEIGHBOR, "n-1"): 4}
    late = gs.neighbor("n-1", "v1", "s1", "10.0.1.6", MAC.format(6), REMOTE, revision=4)
    assert _status(state, late)["neighbor:n-1"] is Status.OUT_OF_ORDER
    assert state.neighbors == {}


def test_unversioned_requests_keep_todays_behaviour() -> None:
    state = DesiredState()
    _status(state, *_base(), gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), revision=3))
    _status(state, gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), op=gs.DELETE, revision=0))
    assert _status(state, gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), revision=0))["port:p-1"] is (
        Status.SUCCESS
    )
    assert "p-1" in state.ports


def test_alcor_revision_one_leaves_no_tombstone() -> None:
    """Alcor sends every resource at revision 1, and a port's subnet with the port's operation:
    the subnet deleted with one port comes back with the next, at revision 1 again."""
    state = DesiredState()
    _status(state, *_base(), gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5)))
    deleted = _status(
        state,
        gs.subnet("s1", "v1", "10.0.1.0/24", 100, op=gs.DELETE),
        gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5), op=gs.DELETE),
    )
    assert set(deleted.values()) == {Status.SUCCESS} and state.tombstones == {}
    again = _status(
        state,
        gs.subnet("s1", "v1", "10.0.1.0/24", 100, "10.0.1.1", op=gs.CREATE),
        gs.port("p-1", "v1", "s1", "10.0.1.5", MAC.format(5)),
    )
    assert again == {"subnet:s1": Status.SUCCESS, "port:p-1": Status.SUCCESS}


def test_stale_context_of_a_deleted_resource_is_ignored() -> None:
    state = DesiredState()
    _status(state, *_base(), gs.subnet("s2", "v1", "10.0.2.0/24", 100, op=gs.CREATE, revision=2))
    _status(state, gs.subnet("s2", "v1", "10.0.2.0/24", 100, op=gs.DELETE, revision=2))
    assert _run(state, gs.subnet("s2", "v1", "10.0.2.0/24", 100, op=gs.INFO, revision=1)) == {}
    assert "s2" not in state.subnets


def test_tombstones_are_bounded_newest_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(state_module, "MAX_TOMBSTONES", 3)
    monkeypatch.setattr(store_module, "MAX_TOMBSTONES", 3)
    state, store = DesiredState(), Store(tmp_path)
    for i in range(1, 6):
        for outcome in state.apply(
            decode_v2(gs.goal_state_v2(gs.vpc(f"v{i}", 100 + i, op=gs.DELETE, revision=i + 1)), "")
        ):
            store.materialize(state, [(outcome.request.type, outcome.request.id)])
    expected = {(ResourceType.VPC, f"v{i}"): i + 1 for i in (3, 4, 5)}
    assert state.tombstones == expected
    assert list(store.load_tombstones()) == list(expected)
    store.close()


# ---------------------------------------------------------------- revert and recovery, random sequences
SUBNETS = {"s1": "10.0.1.0/24", "s2": "10.0.2.0/24"}
IDS = ["p-1", "p-2", "p-3", "n-1", "n-2"]  # ports and neighbours draw from one pool: twins happen


def _random_message(rng: random.Random) -> Any:
    states = []
    for _ in range(rng.randint(1, 6)):
        op = rng.choice([gs.CREATE, gs.CREATE, gs.UPDATE, gs.DELETE, gs.INFO])
        revision = rng.randint(0, 4)
        sid = rng.choice(list(SUBNETS))
        ip = f"{SUBNETS[sid][:-4]}{rng.randint(1, 5)}"  # .1 is the gateway
        mac = MAC.format(rng.randint(1, 5))
        kind = rng.random()
        if kind < 0.15:
            vni = rng.choice([100, 200])
            states.append(
                gs.subnet(sid, "v1", SUBNETS[sid], vni, f"{SUBNETS[sid][:-4]}1", op=op, revision=revision)
            )
        elif kind < 0.55:
            pairs = [(f"{SUBNETS[sid][:-4]}100", "")] if rng.random() < 0.3 else []
            port_id = rng.choice(IDS)
            states.append(gs.port(port_id, "v1", sid, ip, mac, op=op, revision=revision, pairs=pairs))
        elif kind < 0.9:
            host, kind = rng.choice([HOST, REMOTE]), rng.choice([gs.pb.L2, gs.pb.L3])  # L2/x and L3/x: one id
            states.append(gs.neighbor(rng.choice(IDS), "v1", sid, ip, mac, host, kind, op, revision))
        else:
            states.append(gs.dhcp(f"d-{rng.randint(1, 3)}", sid, mac, ip, op=op, revision=revision))
    return gs.goal_state_v2(gs.vpc("v1", 100), *states, host_ip=HOST)


def _wire(message: Any) -> Wire:
    return Wire(2, message.SerializeToString(), HOST)


@pytest.mark.parametrize("seed", range(12))
def test_revert_restores_exactly_what_apply_changed(seed: int) -> None:
    rng = random.Random(seed)
    state = DesiredState()
    for _ in range(60):
        requests = decode_wire(_wire(_random_message(rng)))
        before = copy.deepcopy(state)
        outcomes = state.apply(requests)
        # the address index is a function of what is held (a rebuild from scratch is equal)
        assert DesiredState(copy.deepcopy(state.resources), dict(state.tombstones)).claims == state.claims
        state.revert(outcomes)
        assert state == before  # resources, tombstones and the address index
        again = state.apply(requests)  # the resend after a revert changes the same things
        assert [(o.status, o.changed) for o in again] == [(o.status, o.changed) for o in outcomes]


@pytest.mark.parametrize("seed", range(4))
def test_revert_puts_evicted_tombstones_back(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(state_module, "MAX_TOMBSTONES", 2)
    rng = random.Random(seed)
    state = DesiredState()
    for _ in range(40):
        message = gs.goal_state_v2(
            *(
                gs.vpc(f"v{rng.randint(1, 6)}", 100, op=gs.DELETE, revision=rng.randint(1, 9))
                for _ in range(3)
            )
        )
        before = copy.deepcopy(state)
        outcomes = state.apply(decode_v2(message, ""))
        assert len(state.tombstones) <= 2
        state.revert(outcomes)
        assert state == before and list(state.tombstones) == list(before.tombstones)
        state.apply(decode_v2(message, ""))


def test_no_two_endpoints_share_an_address_while_subnets_stay_put() -> None:
    rng = random.Random(99)
    state = DesiredState()
    state.apply(decode_v2(gs.goal_state_v2(*_base()), HOST))
    for _ in range(300):
        state.apply(decode_v2(_random_message_endpoints(rng), HOST))
    addresses: dict[tuple[int, str], set[str]] = {}
    for port in state.ports.values():
        for fip in port.fixed_ips:
            addresses.setdefault((100, fip.ip), set()).add(port.id)
            addresses.setdefault((100, port.mac), set()).add(port.id)
    for nb in state.neighbors.values():
        for vni, ip in state.neighbor_segments(nb):
            addresses.setdefault((vni, ip), set()).add(nb.id)
            addresses.setdefault((vni, nb.mac), set()).add(nb.id)
    assert addresses and all(len(ids) == 1 for ids in addresses.values())


def _random_message_endpoints(rng: random.Random) -> Any:
    states = []
    for _ in range(rng.randint(1, 4)):
        op = rng.choice([gs.CREATE, gs.UPDATE, gs.DELETE])
        ip, mac = f"10.0.1.{rng.randint(2, 6)}", MAC.format(rng.randint(2, 6))
        if rng.random() < 0.5:
            states.append(gs.port(rng.choice(IDS), "v1", "s1", ip, mac, op=op, revision=0))
        else:
            states.append(gs.neighbor(rng.choice(IDS), "v1", "s1", ip, mac, REMOTE, op=op, revision=0))
    return gs.goal_state_v2(*states, host_ip=HOST)


@pytest.mark.parametrize("seed", range(4))
def test_recover_equals_the_live_state_with_tombstones(tmp_path: Any, seed: int) -> None:
    """Journal every message, fold now and then (as the core does when idle), restart: the
    recovered state is the live one, tombstones and address index included."""
    rng = random.Random(seed)
    live, store = DesiredState(), Store(tmp_path)
    unfolded: set[tuple[ResourceType, str]] = set()
    seq = 0
    for _ in range(80):
        wire = _wire(_random_message(rng))
        changed = [o for o in live.apply(decode_wire(wire)) if o.changed]
        if changed:
            seq = store.journal(wire)
            unfolded.update((o.request.type, o.request.id) for o in changed)
        if unfolded and rng.random() < 0.2:
            store.materialize(live, unfolded, journal_through=seq)
            unfolded.clear()
    assert live.tombstones  # the sequence did delete things
    store.close()
    recovered = recover(Store(tmp_path))
    assert recovered == live
    reloaded = Store(tmp_path)  # and once folded, the rows and tombstone table alone
    assert DesiredState(reloaded.load(), reloaded.load_tombstones()) == live
    reloaded.close()
