"""Security-group planning: rules → flows (golden text), the contract's readings, and what a
change touches."""

from __future__ import annotations

from agent._pb import goalstate_pb2 as pb
from agent.model.decode import decode_v2
from agent.model.resources import ResourceType, Status
from agent.model.state import DesiredState
from agent.planner import security
from agent.planner.flows import match
from agent.planner.pipeline import TABLE_NAMES
from agent.planner.plan import Planner
from agent.sandbox import goalstates as gs

HOST = "172.31.0.11"
BASE = (gs.vpc("v1", 100), gs.subnet("s1", "v1", "10.0.1.0/24", 100, "10.0.1.1", "fa:16:3e:00:00:01"))
IN, OUT = gs.INGRESS, gs.EGRESS


def _apply(state: DesiredState, *states) -> list:
    return state.apply(decode_v2(gs.goal_state_v2(*states, host_ip=HOST), HOST))


def _planner(*states) -> Planner:
    state = DesiredState()
    _apply(state, *BASE, *states)
    planner = Planner(state, HOST)
    planner.set_tunnel(9)
    planner.rebuild()
    planner.set_interfaces([("tap-p1", "p1", 3, 0), ("tap-p2", "p2", 4, 0), ("tap-p3", "p3", 5, 0)])
    return planner


def _port(pid: str, last: int, groups=(), op=gs.CREATE, revision=1):
    return gs.port(
        pid,
        "v1",
        "s1",
        f"10.0.1.{last}",
        f"fa:16:3e:00:00:{last:02x}",
        op=op,
        revision=revision,
        groups=groups,
    )


def _mac(i: int) -> str:
    return f"fa:16:3e:01:{i >> 8:02x}:{i & 255:02x}"


def _flows(planner: Planner, port_id: str) -> list:
    """The port's own security flows and its groups' rules on it."""
    port = planner.state.ports[port_id]
    owners = [security.port_owner(port_id)] + [
        security.rules_owner(port_id, g) for g in port.security_group_ids
    ]
    return [f for o in owners for f in planner.flows(o)]


def _text(planner: Planner, port_id: str) -> list[str]:
    return sorted(f.text(TABLE_NAMES) for f in _flows(planner, port_id))


def _prio(planner: Planner, group_id: str) -> int:
    """The priority of a group's plain rules (100 + its slot)."""
    return 100 + planner.security.slots[group_id]


def _rule_lines(planner: Planner, port_id: str) -> list[str]:
    own = (" priority=1,", " priority=2,")  # the port's default drop and blocked-connection marker
    return [
        t for t in _text(planner, port_id) if "_RULES" in t.split(",")[0] and not any(o in t for o in own)
    ]


def test_port_flows_golden() -> None:
    group = gs.security_group("g1", [gs.sg_rule("r1", IN, gs.TCP, (22, 22), "10.0.0.0/8")])
    planner = _planner(group, _port("p1", 5, ["g1"]))
    prio = _prio(planner, "g1")
    assert _text(planner, "p1") == [
        "table=L2_LOOKUP, priority=101, reg0=0x64, dl_dst=fa:16:3e:00:00:05, dl_type=0x800 "
        "actions=set_field:0x3->reg3,ct(zone=3,table=45)",
        "table=SG_EGRESS, priority=100, in_port=3, dl_type=0x800 "
        "actions=set_field:0x3->reg3,ct(zone=3,table=13)",
        "table=SG_EGRESS, priority=110, in_port=3, dl_dst=fa:16:3e:00:00:01, dl_type=0x800, nw_proto=1, "
        "nw_dst=10.0.1.1, icmp_type=8 actions=goto_table:L3_GATEWAY",
        "table=SG_EGRESS_COMMIT, priority=120, reg3=0x3, dl_type=0x800, ct_state=+est-rpl+trk, ct_mark=1/1 "
        "actions=ct(commit,zone=3,exec(set_field:0->ct_mark,move:reg4[0..31]->ct_label[0..31])),goto_table:L3_GATEWAY",
        "table=SG_EGRESS_COMMIT, priority=120, reg3=0x3, dl_type=0x800, ct_state=+new+trk "
        "actions=ct(commit,zone=3,exec(move:reg4[0..31]->ct_label[0..31])),goto_table:L3_GATEWAY",
        "table=SG_EGRESS_RULES, priority=1, reg3=0x3 actions=drop",
        "table=SG_EGRESS_RULES, priority=2, reg3=0x3, dl_type=0x800, ct_state=+est-rpl+trk "
        "actions=ct(commit,zone=3,exec(set_field:1->ct_mark))",
        "table=SG_INGRESS_COMMIT, priority=100, reg3=0x3 actions=output:3",
        "table=SG_INGRESS_COMMIT, priority=120, reg3=0x3, dl_type=0x800, ct_state=+est-rpl+trk, ct_mark=1/1 "
        "actions=ct(commit,zone=3,exec(set_field:0->ct_mark,move:reg4[0..31]->ct_label[0..31])),output:3",
        "table=SG_INGRESS_COMMIT, priority=120, reg3=0x3, dl_type=0x800, ct_state=+new+trk "
        "actions=ct(commit,zone=3,exec(move:reg4[0..31]->ct_label[0..31])),output:3",
        "table=SG_INGRESS_RULES, priority=1, reg3=0x3 actions=drop",
        f"table=SG_INGRESS_RULES, priority={prio}, reg3=0x3, dl_type=0x800, nw_proto=6, nw_src=10.0.0.0/8, "
        f"tcp_dst=22, ct_state=-rpl+trk actions=set_field:{security.rule_label('r1'):#x}->reg4,"
        "goto_table:SG_INGRESS_COMMIT",
        "table=SG_INGRESS_RULES, priority=2, reg3=0x3, dl_type=0x800, ct_state=+est-rpl+trk "
        "actions=ct(commit,zone=3,exec(set_field:1->ct_mark))",
    ]
    rule_flows = planner.flows(security.rules_owner("p1", "g1"))
    assert {f.cookie for f in rule_flows} == {security.rule_cookie("p1", "r1")}


def test_port_without_groups_has_no_security_flows() -> None:
    planner = _planner(_port("p1", 5))
    assert _text(planner, "p1") == []


def test_no_protocol_reads_as_any_and_port_ranges_as_masks() -> None:
    group = gs.security_group(
        "g1",
        [
            gs.sg_rule("any", IN),  # upstream's "no protocol": TCP, ports 0/0
            gs.sg_rule("tcp-all", OUT, gs.TCP, (1, 65535)),
            gs.sg_rule("udp-all", OUT, gs.UDP),
            gs.sg_rule("range", OUT, gs.UDP, (1000, 1999)),
            gs.sg_rule("echo", OUT, gs.ICMP, (8, 0)),
        ],
    )
    planner = _planner(group, _port("p1", 5, ["g1"]))
    lines = _rule_lines(planner, "p1")
    ingress = [t for t in lines if t.startswith("table=SG_INGRESS_RULES")]
    assert ingress == [
        f"table=SG_INGRESS_RULES, priority={_prio(planner, 'g1')}, reg3=0x3, dl_type=0x800, "
        f"ct_state=-rpl+trk actions=set_field:{security.rule_label('any'):#x}->reg4,"
        "goto_table:SG_INGRESS_COMMIT"
    ]
    egress = [t.split(" actions")[0].split("dl_type=0x800, ")[1] for t in lines if "SG_EGRESS_RULES" in t]
    assert "nw_proto=6, ct_state=-rpl+trk" in egress  # TCP 1-65535: every TCP port, no port match
    assert "nw_proto=17, ct_state=-rpl+trk" in egress  # UDP with no range: every UDP port
    assert "nw_proto=1, icmp_type=8, ct_state=-rpl+trk" in egress
    blocks = [t for t in egress if "udp_dst=" in t]
    assert len(blocks) == len(security.port_masks(1000, 1999))


def test_port_masks_cover_the_range_exactly() -> None:
    for lo, hi in ((1, 65535), (0, 65535), (1000, 1999), (22, 22), (8080, 8089), (1, 1), (65535, 65535)):
        covered = set()
        for value, mask in security.port_masks(lo, hi):
            block = {p for p in range(value, value + (~mask & 0xFFFF) + 1)}
            assert not covered & block
            covered |= block
        assert covered == set(range(lo, hi + 1)), (lo, hi)
    assert len(security.port_masks(1, 65535)) == 16


def test_rule_change_rewrites_only_that_rules_flows() -> None:
    rules = [gs.sg_rule("a", IN, gs.TCP, (80, 80)), gs.sg_rule("b", IN, gs.UDP, (53, 53))]
    planner = _planner(gs.security_group("g1", rules), _port("p1", 5, ["g1"]), _port("p2", 6, ["g1"]))
    before = {f.key: f for f in planner.flows(security.rules_owner("p1", "g1"))}
    (outcome,) = _apply(
        planner.state, gs.security_group("g1", [rules[1], gs.sg_rule("c", OUT, gs.ICMP)], gs.UPDATE, 2)
    )
    assert outcome.status is Status.SUCCESS
    touched = planner.touch(ResourceType.SECURITYGROUP, "g1")
    assert touched == {security.rules_owner("p1", "g1"), security.rules_owner("p2", "g1")}  # not their own
    after = {f.key: f for f in planner.flows(security.rules_owner("p1", "g1"))}
    removed = [before[k] for k in set(before) - set(after)]
    added = [after[k] for k in set(after) - set(before)]
    assert {f.cookie for f in removed} == {security.rule_cookie("p1", "a")}
    assert {f.cookie for f in added} == {security.rule_cookie("p1", "c")}
    assert all(before[k] == after[k] for k in set(before) & set(after))  # the rest: not rewritten


def test_remote_group_is_a_conjunction_shared_by_every_port() -> None:
    db = gs.security_group("db", [gs.sg_rule("r", IN, gs.TCP, (5432, 5432), remote_group_id="app")])
    app = gs.security_group("app", [])
    planner = _planner(db, app, _port("p1", 5, ["db"]), _port("p2", 6, ["app"]), _port("p3", 7, ["db"]))
    slot = planner.security.slots["app"]
    prio, conj = 30100 + slot, slot + 1
    assert _rule_lines(planner, "p1") == [
        f"table=SG_INGRESS_RULES, priority={prio}, reg3=0x3, dl_type=0x800, nw_proto=6, tcp_dst=5432, "
        f"ct_state=-rpl+trk actions=conjunction({conj},1/2)"
    ]
    remote = sorted(f.text(TABLE_NAMES) for f in planner.flows(security.remote_owner("app")))
    assert remote == [
        f"table=SG_INGRESS_RULES, priority={prio}, conj_id={conj} "
        f"actions=set_field:{security.remote_label('app'):#x}->reg4,goto_table:SG_INGRESS_COMMIT",
        f"table=SG_INGRESS_RULES, priority={prio}, dl_type=0x800, nw_src=10.0.1.6 "
        f"actions=conjunction({conj},2/2)",
    ]
    # p3 (a db port) joins app: app's member flows change, and p3's own; not p1's.
    _apply(planner.state, _port("p3", 7, ["db", "app"], gs.UPDATE, 2))
    touched = planner.touch(ResourceType.PORT, "p3")
    assert security.remote_owner("app") in touched
    assert not {o for o in touched if "p1" in o[1]}


def test_one_member_of_a_thousand_touches_only_its_own_flow() -> None:
    """A remote group with 1,000 members: one joining adds one flow to the bundle, nothing else."""
    from agent.reconciler.flows import FlowReconciler
    from tests.support.recording_driver import RecordingDriver

    rule = gs.sg_rule("r", IN, gs.TCP, (22, 22), remote_group_id="big")
    members = [
        gs.port(f"m{i}", "v1", "s1", f"10.0.{4 + i // 250}.{i % 250 + 2}", _mac(i), groups=["big"])
        for i in range(1000)
    ]
    wide = gs.subnet("s1", "v1", "10.0.0.0/16", 100, "10.0.0.1", "fa:16:3e:00:00:01")
    state = DesiredState()
    _apply(state, BASE[0], wide, gs.security_group("g", [rule]), gs.security_group("big", []), *members)
    _apply(state, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", groups=["g"]))
    planner = Planner(state, HOST)
    planner.rebuild()
    planner.set_interfaces([("tap-p1", "p1", 3, 0)])
    driver = RecordingDriver()
    reconciler = FlowReconciler(driver)
    reconciler.resync({o: planner.flows(o) for o in planner.all_owners()})
    assert len(planner.flows(security.remote_owner("big"))) == 1001  # members + the conj_id flow
    driver.bundles.clear()
    joining = gs.port("m1000", "v1", "s1", "10.0.9.9", "fa:16:3e:02:00:00", groups=["big"])
    _apply(state, joining)
    owners = planner.touch(ResourceType.PORT, "m1000")
    result = reconciler.update((o, planner.flows(o)) for o in owners)
    assert (result.added, result.deleted) == (1, 0)
    ((deletes, adds),) = driver.bundles
    assert deletes == [] and len(adds) == 1 and "nw_src=10.0.9.9" in adds[0].text()


def test_unenforced_rules_are_invalid_arg_and_the_rest_is_enforced() -> None:
    group = gs.security_group(
        "g1",
        [
            gs.sg_rule("v4", IN, gs.TCP, (80, 80)),
            gs.sg_rule("v6", IN, gs.TCP, (22, 22), ethertype=pb.IPV6),
            gs.sg_rule("http", IN, pb.HTTP),
        ],
    )
    state = DesiredState()
    (outcome,) = _apply(state, group)
    assert outcome.status is Status.INVALID_ARG and outcome.changed
    assert "rule v6: IPv6" in outcome.reason and "rule http: protocol 3" in outcome.reason
    held = state.resources[ResourceType.SECURITYGROUP]["g1"]
    assert [r.id for r in held.rules] == ["v4"]  # type: ignore[union-attr]


def test_group_update_replaces_the_rule_list_even_as_delta() -> None:
    state = DesiredState()
    _apply(state, gs.security_group("g1", [gs.sg_rule("a", IN), gs.sg_rule("b", OUT)]))
    update = gs.security_group("g1", [], gs.UPDATE, 2)
    update.configuration.update_type = pb.DELTA
    _apply(state, update)
    assert state.resources[ResourceType.SECURITYGROUP]["g1"].rules == ()  # type: ignore[union-attr]
    deleted = gs.sg_rule("b", OUT)
    deleted.operation_type = pb.DELETE
    _apply(state, gs.security_group("g1", [gs.sg_rule("a", IN), deleted], gs.UPDATE, 3))
    assert [r.id for r in state.resources[ResourceType.SECURITYGROUP]["g1"].rules] == ["a"]  # type: ignore[union-attr]


def test_builders_emit_canonical_matches() -> None:
    group = gs.security_group("g1", [gs.sg_rule("r", IN, gs.UDP, (10, 20), remote_group_id="g1")])
    planner = _planner(group, _port("p1", 5, ["g1"]), _port("p2", 6, ["g1"]))
    remote = planner.flows(security.remote_owner("g1"))
    for flow in _flows(planner, "p1") + remote + security.base_flows(1):
        assert match(*flow.match) == flow.match, flow.text()


def test_neighbours_naming_their_groups_are_members() -> None:
    """The extension field (NeighborConfiguration 100) makes a remote port a member; a neighbour
    without it (an upstream controller) is not one."""
    db = gs.security_group("db", [gs.sg_rule("r", IN, gs.TCP, (5432, 5432), remote_group_id="app")])
    far = gs.neighbor("n1", "v1", "s1", "10.0.1.20", "fa:16:3e:00:00:20", "172.31.0.12", groups=["app"])
    plain = gs.neighbor("n2", "v1", "s1", "10.0.1.21", "fa:16:3e:00:00:21", "172.31.0.12")
    planner = _planner(db, gs.security_group("app", []), _port("p1", 5, ["db"]), far, plain)
    sources = [f.text() for f in planner.flows(security.remote_owner("app")) if "nw_src" in f.text()]
    assert len(sources) == 1 and "nw_src=10.0.1.20" in sources[0]
    _apply(planner.state, gs.neighbor("n2", "v1", "s1", "10.0.1.21", "fa:16:3e:00:00:21", "172.31.0.12",
                                      op=gs.UPDATE, revision=2, groups=["app"]))  # fmt: skip
    touched = planner.touch(ResourceType.NEIGHBOR, "n2")
    assert security.remote_owner("app") in touched and not {o for o in touched if "p1" in o[1]}
    assert sum("nw_src" in f.text() for f in planner.flows(security.remote_owner("app"))) == 2


def test_stateless_group_rules_bypass_conntrack() -> None:
    """The extension field (SecurityGroupConfiguration 100): rules before conntrack, egress on
    to the router, ingress straight out of the port; a remote group there is reported."""
    group = gs.security_group(
        "g1",
        [
            gs.sg_rule("in", IN, gs.UDP, (7000, 7000), "10.0.1.6/32"),
            gs.sg_rule("out", OUT, gs.UDP, remote_ip_prefix="10.0.1.6/32"),
            gs.sg_rule("rg", IN, gs.TCP, (22, 22), remote_group_id="g1"),
        ],
        stateless=True,
    )
    planner = _planner(_port("p1", 5, ["g1"]))
    (outcome,) = _apply(planner.state, group)
    assert (
        outcome.status is Status.INVALID_ARG
        and "rule rg: a remote group in a stateless group" in outcome.reason
    )
    planner.touch(ResourceType.SECURITYGROUP, "g1")
    prio = 200 + planner.security.slots["g1"]
    assert sorted(f.text(TABLE_NAMES) for f in planner.flows(security.rules_owner("p1", "g1"))) == [
        f"table=L2_LOOKUP, priority={prio}, reg0=0x64, dl_dst=fa:16:3e:00:00:05, dl_type=0x800, nw_proto=17, "
        "nw_src=10.0.1.6, udp_dst=7000 actions=output:3",
        f"table=SG_EGRESS, priority={prio}, in_port=3, dl_type=0x800, nw_proto=17, nw_dst=10.0.1.6 "
        "actions=goto_table:L3_GATEWAY",
    ]


def test_members_listed_by_address_in_the_group() -> None:
    """The extension field (SecurityGroupConfiguration 101): addresses a group lists count as its
    members beside its ports; a change of the list re-plans only the group's member flows."""
    db = gs.security_group("db", [gs.sg_rule("r", IN, gs.TCP, (5432, 5432), remote_group_id="app")])
    app = gs.security_group("app", [], member_ips=["10.0.2.7", "10.0.3.0/24"])
    planner = _planner(db, app, _port("p1", 5, ["db"]), _port("p2", 6, ["app"]))
    texts = [f.text() for f in planner.flows(security.remote_owner("app"))]
    sources = sorted(t.split("nw_src=")[1].split(" ")[0] for t in texts if "nw_src" in t)
    assert sources == ["10.0.1.6", "10.0.2.7", "10.0.3.0/24"]
    (outcome,) = _apply(planner.state, gs.security_group("app", [], gs.UPDATE, 2, member_ips=["10.0.2.8"]))
    assert outcome.status is Status.SUCCESS
    assert planner.touch(ResourceType.SECURITYGROUP, "app") == {security.remote_owner("app")} | {
        security.rules_owner("p2", "app")
    }
    (bad,) = _apply(planner.state, gs.security_group("app", [], gs.UPDATE, 3, member_ips=["10.0.2"]))
    assert bad.status is Status.INVALID_ARG and "member_ips" in bad.reason
