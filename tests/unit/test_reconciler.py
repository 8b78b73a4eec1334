"""Reconciler against a recording driver: minimal diffs, atomic failure, resync without flush."""

from __future__ import annotations

from agent.planner.cookies import Kind
from agent.planner.flows import Field, Flow, Output, match
from agent.reconciler.flows import FlowReconciler
from tests.support.recording_driver import RecordingDriver

A = (Kind.PORT, "a")
B = (Kind.PORT, "b")


def _flow(port: int, out: int, table: int = 40) -> Flow:
    return Flow(table, 100, match((Field.IN_PORT, port)), (Output(out),), cookie=port)


def test_apply_diff_of_a_to_b_gives_b() -> None:
    driver = RecordingDriver()
    rec = FlowReconciler(driver)
    a = [_flow(1, 1), _flow(2, 2), _flow(3, 3)]
    b = [_flow(2, 2), _flow(3, 30), _flow(4, 4)]
    rec.update({A: a}.items())
    result = rec.update({A: b}.items())
    assert {f.key: f for f in b} == driver.table == rec.installed
    # Only the difference was sent: delete 1, replace 3, add 4; flow 2 untouched.
    deletes, adds = driver.bundles[-1]
    assert [f.key for f in deletes] == [_flow(1, 1).key]
    assert sorted(f.text() for f in adds) == sorted([_flow(3, 30).text(), _flow(4, 4).text()])
    assert (result.added, result.deleted, result.bundles) == (2, 1, 1)


def test_no_change_sends_nothing() -> None:
    driver = RecordingDriver()
    rec = FlowReconciler(driver)
    rec.update({A: [_flow(1, 1)]}.items())
    rec.update({A: [_flow(1, 1)]}.items())
    assert len(driver.bundles) == 1


def test_rejected_owner_fails_alone_and_mirror_stays_true() -> None:
    driver = RecordingDriver()
    rec = FlowReconciler(driver)
    bad = _flow(9, 9)
    driver.reject.add(bad.key)
    result = rec.update({A: [_flow(1, 1)], B: [bad]}.items())
    assert set(result.failed) == {B}
    assert driver.table == {_flow(1, 1).key: _flow(1, 1)} == rec.installed
    assert B not in rec.desired


def test_key_moving_between_owners_is_not_deleted_by_the_old_owner() -> None:
    driver = RecordingDriver()
    rec = FlowReconciler(driver)
    shared = _flow(5, 5)
    rec.update({A: [shared]}.items())
    rec.update({B: [shared]}.items())
    rec.update({A: []}.items())
    assert shared.key in driver.table
    assert rec.owner_of(shared.key) == B


def test_resync_keeps_unchanged_flows_and_sweeps_stale_ones() -> None:
    driver = RecordingDriver()
    keep, stale, changed = _flow(1, 1), _flow(2, 2), _flow(3, 3)
    driver.table = {f.key: f for f in (keep, stale, changed)}
    rec = FlowReconciler(driver)
    result = rec.resync({A: [keep, _flow(3, 33)], B: [_flow(4, 4)]})
    deletes, adds = driver.bundles[-1]
    assert [f.key for f in deletes] == [stale.key]
    assert sorted(f.text() for f in adds) == sorted([_flow(3, 33).text(), _flow(4, 4).text()])
    assert keep.key not in {f.key for f in adds}  # no flush, no re-add of what is right
    assert (result.added, result.deleted) == (2, 1)
    assert driver.table == rec.installed


def test_resync_finds_a_stray_when_two_owners_share_a_key_and_the_counts_match() -> None:
    """Owners A and B both want flow 1 (found twice), flow 2 is missing, the switch holds flow 1
    and a stray: as many desired flows found as the switch holds, yet the stray is deleted."""
    driver = RecordingDriver()
    shared, stray = _flow(1, 1), _flow(8, 8)
    driver.table = {f.key: f for f in (shared, stray)}
    rec = FlowReconciler(driver)
    result = rec.resync({A: [shared], B: [shared, _flow(2, 2)]})
    deletes, adds = driver.bundles[-1]
    assert [f.key for f in deletes] == [stray.key]
    assert [f.key for f in adds] == [_flow(2, 2).key]
    assert (result.added, result.deleted) == (1, 1)
    assert driver.table == rec.installed and rec.owner_of(shared.key) == B


def test_resync_with_everything_in_place_sends_nothing() -> None:
    driver = RecordingDriver()
    flows = [_flow(1, 1), _flow(2, 2), _flow(3, 3)]
    driver.table = {f.key: f for f in flows}
    rec = FlowReconciler(driver)
    result = rec.resync({A: flows[:2], B: flows[2:]})
    assert driver.bundles == [] and (result.added, result.deleted, result.bundles) == (0, 0, 0)
    assert rec.installed == driver.table and rec.owner_of(flows[2].key) == B


def test_check_reports_missing_different_and_unknown_flows() -> None:
    driver = RecordingDriver()
    rec = FlowReconciler(driver)
    rec.update({A: [_flow(1, 1), _flow(2, 2), _flow(3, 3)]}.items())
    assert rec.check().checked == 3 and not (rec.check().missing or rec.check().extra)
    del driver.table[_flow(1, 1).key]
    driver.table[_flow(2, 2).key] = _flow(2, 20)
    driver.table[_flow(9, 9).key] = _flow(9, 9)
    drift = rec.check()
    assert [f.key for f in drift.missing] == [_flow(1, 1).key]
    assert [f.key for f in drift.differ] == [_flow(2, 2).key]
    assert [(f.key, f.cookie) for f in drift.extra] == [(_flow(9, 9).key, 9)]


def test_resync_isolates_an_owner_the_switch_refuses() -> None:
    driver = RecordingDriver()
    rec = FlowReconciler(driver)
    driver.table[_flow(7, 7).key] = _flow(7, 7)  # a stray of ours: deleted by the resync
    driver.table[_flow(2, 1).key] = _flow(2, 1)  # b's old flow: b is refused, so it goes too
    driver.reject.add(_flow(2, 2).key)
    result = rec.resync({A: [_flow(1, 1)], B: [_flow(2, 2)]})
    assert set(result.failed) == {B}
    assert driver.table == rec.installed == {_flow(1, 1).key: _flow(1, 1)}
    assert B not in rec.desired
