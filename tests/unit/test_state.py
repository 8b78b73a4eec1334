"""Desired-state rules: idempotence, revisions, DELTA/FULL, references, deletes."""

from __future__ import annotations

from agent.model.decode import Wire, decode_v2, decode_wire
from agent.model.resources import ResourceType, Status
from agent.model.state import DesiredState
from agent.model.store import Store, recover
from agent.sandbox import goalstates as gs

HOST = "172.31.0.11"


def _apply(state: DesiredState, *states) -> dict[str, Status]:
    outcomes = state.apply(decode_v2(gs.goal_state_v2(*states, host_ip=HOST), HOST))
    return {o.request.id: o.status for o in outcomes if o.request.acted_on}


def _base() -> tuple:
    return (gs.vpc("v1", 100), gs.subnet("s1", "v1", "10.0.1.0/24", 100))


def test_same_create_twice_is_success_and_unchanged() -> None:
    state = DesiredState()
    port = gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05")
    assert _apply(state, *_base(), port) == {"v1": Status.SUCCESS, "p1": Status.SUCCESS}
    before = dict(state.ports)
    outcomes = state.apply(decode_v2(gs.goal_state_v2(*_base(), port, host_ip=HOST), HOST))
    assert all(o.status is Status.SUCCESS and not o.changed for o in outcomes)
    assert state.ports == before


def test_older_revision_is_out_of_order_and_changes_nothing() -> None:
    state = DesiredState()
    _apply(state, *_base(), gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", revision=5))
    older = gs.port("p1", "v1", "s1", "10.0.1.9", "fa:16:3e:00:00:09", op=gs.UPDATE, revision=4)
    assert _apply(state, older)["p1"] is Status.OUT_OF_ORDER
    assert state.ports["p1"].mac == "fa:16:3e:00:00:05"


def test_reference_in_same_message_then_in_held_state() -> None:
    state = DesiredState()
    # subnet arrives after the port in the message: still resolved (dependency order)
    assert (
        _apply(state, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05"), *_base())["p1"]
        is Status.SUCCESS
    )
    # later message without the subnet: resolved from what is held
    assert _apply(state, gs.port("p2", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06"))["p2"] is Status.SUCCESS


def test_unknown_subnet_and_ip_outside_subnet_are_invalid_alone() -> None:
    state = DesiredState()
    result = _apply(
        state,
        *_base(),
        gs.port("bad1", "v1", "nope", "10.0.1.5", "fa:16:3e:00:00:05"),
        gs.port("bad2", "v1", "s1", "10.9.1.5", "fa:16:3e:00:00:06"),
        gs.port("good", "v1", "s1", "10.0.1.7", "fa:16:3e:00:00:07"),
        gs.dhcp("d1", "nope", "fa:16:3e:00:00:07", "10.0.1.7"),
    )
    assert result["bad1"] is Status.INVALID_ARG
    assert result["bad2"] is Status.INVALID_ARG
    assert result["d1"] is Status.INVALID_ARG
    assert result["good"] is Status.SUCCESS
    assert set(state.ports) == {"good"}


def test_delete_unknown_is_success_and_delete_removes() -> None:
    state = DesiredState()
    assert _apply(state, gs.port("ghost", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", op=gs.DELETE)) == {
        "ghost": Status.SUCCESS
    }
    _apply(state, *_base(), gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05"))
    _apply(state, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", op=gs.DELETE))
    assert "p1" not in state.ports


def test_delta_merges_full_replaces() -> None:
    state = DesiredState()
    _apply(
        state,
        *_base(),
        gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", pairs=[("10.0.1.100", "")]),
    )
    delta = gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", op=gs.UPDATE, revision=2)
    delta.configuration.update_type = 0  # DELTA
    del delta.configuration.allow_address_pairs[:]
    _apply(state, delta)
    assert state.ports["p1"].address_pairs  # kept: the delta did not mention them
    full = gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", op=gs.UPDATE, revision=3)
    _apply(state, full)
    assert state.ports["p1"].address_pairs == ()


def test_info_subnet_is_context_for_lookups() -> None:
    state = DesiredState()
    statuses = _apply(state, gs.subnet("s1", "v1", "10.0.1.0/24", 100, op=gs.INFO))
    assert statuses == {}  # INFO is not acted on: no status
    assert state.subnets["s1"].tunnel_id == 100


def test_store_round_trip(tmp_path) -> None:
    state = DesiredState()
    _apply(
        state,
        *_base(),
        gs.port(
            "p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", pairs=[("10.0.1.64/28", "fa:16:3e:00:00:99")]
        ),
        gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12"),
    )
    store = Store(tmp_path)
    store.materialize(state, [(t, rid) for t, items in state.resources.items() for rid in items])
    del state.resources[ResourceType.VPC]["v1"]
    store.materialize(state, [(ResourceType.VPC, "v1")])
    loaded = store.load()
    assert loaded[ResourceType.PORT] == state.ports
    assert loaded[ResourceType.NEIGHBOR] == state.neighbors
    assert loaded[ResourceType.VPC] == {}
    store.close()


def _router_update(routes: list, delta: bool, deletes: tuple[str, ...] = (), revision: int = 2):
    subnets = sorted({r[0] for r in routes} | {"s1"})
    state = gs.router("r1", "fe:16:11:00:00:01", subnets, routes, op=gs.UPDATE, revision=revision)
    state.configuration.update_type = 0 if delta else 1
    for rule_id in deletes:
        table = next(t for t in state.configuration.subnet_routing_tables if t.subnet_id == "s1")
        table.routing_rules.add(operation_type=gs.DELETE, id=rule_id)
    return state


def test_router_delta_merges_per_subnet_and_rule_full_replaces() -> None:
    state = DesiredState()
    s2 = gs.subnet("s2", "v1", "10.0.2.0/24", 100)
    routes = [("s1", "10.9.0.0/16", "10.0.1.5", 0), ("s1", "10.8.0.0/16", "10.0.1.5", 0)]
    _apply(state, *_base(), s2, gs.router("r1", "fe:16:11:00:00:01", ["s1", "s2"], routes))
    # DELTA: delete rule 0, add a rule on s1; s2 (not named) stays.
    delta = _router_update([("s1", "10.7.0.0/16", "10.0.1.5", 0)], delta=True, deletes=("r1-rule-0",))
    delta.configuration.subnet_routing_tables[0].routing_rules[0].id = "r1-rule-new"
    assert _apply(state, delta)["r1"] is Status.SUCCESS
    router = state.resources[ResourceType.ROUTER]["r1"]
    tables = {t.subnet_id: t for t in router.subnets}
    assert set(tables) == {"s1", "s2"}
    assert sorted(r.destination for r in tables["s1"].rules) == ["10.7.0.0/16", "10.8.0.0/16"]
    assert all(t.removed_rule_ids == () for t in router.subnets)
    # FULL: exactly what it says.
    full = _router_update([], delta=False, revision=3)
    _apply(state, full)
    router = state.resources[ResourceType.ROUTER]["r1"]
    assert [(t.subnet_id, t.rules) for t in router.subnets] == [("s1", ())]


def test_recover_replays_the_journal_like_the_live_path(tmp_path) -> None:
    """Rows, then journaled messages (a DELTA merge and a delete among them) through apply."""
    delta = _router_update([("s1", "10.8.0.0/16", "10.0.1.5", 0)], delta=True)
    delta.configuration.subnet_routing_tables[0].routing_rules[0].id = "r1-rule-new"
    messages = [
        gs.goal_state_v2(*_base(), gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05"), host_ip=HOST),
        gs.goal_state_v2(
            gs.router("r1", "fe:16:11:00:00:01", ["s1"], [("s1", "10.9.0.0/16", "10.0.1.5", 0)]), host_ip=HOST
        ),
        gs.goal_state_v2(delta, host_ip=HOST),
        gs.goal_state_v2(
            gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", op=gs.DELETE), host_ip=HOST
        ),
    ]
    live = DesiredState()
    store = Store(tmp_path)
    for i, message in enumerate(messages):
        wire = Wire(2, message.SerializeToString(), HOST)
        live.apply(decode_wire(wire))
        if i == 0:
            store.materialize(live, [(t, rid) for t, items in live.resources.items() for rid in items])
        else:
            store.journal(wire)
    assert len(live.resources[ResourceType.ROUTER]["r1"].subnets[0].rules) == 2  # merged
    assert live.ports == {}
    recovered = recover(Store(tmp_path))
    assert recovered.resources == live.resources
    assert store.journaled() == []  # folded into rows by recover
    assert DesiredState(store.load()).resources == live.resources
