"""Subnet profiles always fit the C engine: decode's limits, and what several resources add up to."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from agent.dhcp import engine as dhcp_engine
from agent.dhcp import options
from agent.dhcp.engine import Engine
from agent.dhcp.leases import Settings, profile, server_ip
from agent.model import validate
from agent.model.decode import decode_v2
from agent.model.resources import Status, Subnet
from agent.model.state import DesiredState
from agent.sandbox import goalstates as gs


def test_limits_mirror_the_c_engine() -> None:
    assert options.PROFILE_MAX == dhcp_engine.lib.DHCP_MAX_PROFILE_OPTIONS
    assert validate.MAX_PORT_MACS == dhcp_engine.lib.DHCP_MAX_PORT_MACS


def _state(*states: Any) -> DesiredState:
    state = DesiredState()
    outcomes = state.apply(decode_v2(gs.goal_state_v2(*states), ""))
    assert [o.reason for o in outcomes if o.status is not Status.SUCCESS] == []
    return state


def _installed(prof: Any) -> None:
    engine = Engine()
    try:
        engine.set_subnet(1, prof.server_ip, prof.lease_time, prof.options)
    finally:
        engine.close()


def _option(raw: bytes, code: int) -> bytes:
    i = 0
    while i < len(raw):
        if raw[i] == code:
            return raw[i + 2 : i + 2 + raw[i + 1]]
        i += 2 + raw[i + 1]
    raise KeyError(code)


def test_routes_of_several_routers_keep_option_121_within_255_bytes(caplog: pytest.LogCaptureFixture) -> None:
    subnet = gs.subnet("s1", "v1", "10.0.1.0/24", 100, "10.0.1.1", "aa:bb:cc:00:00:01", op=gs.CREATE)
    routers = [
        gs.router(
            rid,
            "fe:16:11:00:00:01",
            ["s1"],
            [("s1", f"10.{base + n}.0.0/16", "10.0.1.5", 0) for n in range(30)],
        )
        for rid, base in (("r1", 0), ("r2", 100))
    ]  # each alone fits (30 x 7 + 5 bytes); together they would take 425
    state = _state(subnet, *routers)
    with caplog.at_level(logging.WARNING, "aca.dhcp"):
        prof = profile(state, state.subnets["s1"], Settings())
    routes = _option(prof.options, options.CLASSLESS_ROUTES)
    assert len(routes) == 250  # 35 routes and the default route
    assert routes.endswith(bytes([0, 10, 0, 1, 1])), "the default route stays"
    assert "event=dhcp_routes_left_out subnet=s1 routes=25 kept=35" in caplog.text
    _installed(prof)


def test_the_largest_accepted_subnet_profile_installs() -> None:
    subnet = gs.subnet(
        "s1", "v1", "10.0.1.0/24", 100, "10.0.1.1", "aa:bb:cc:00:00:01", op=gs.CREATE,
        dns=[f"10.0.1.{n}" for n in range(2, 18)],
    )  # fmt: skip
    for code, size in ((224, 200), (225, 200), (226, 192)):  # 598 bytes: all the room extras have
        subnet.configuration.extra_dhcp_options.add(name=f"option:{code}", value="x" * size)
    router = gs.router(
        "r1", "fe:16:11:00:00:01", ["s1"], [("s1", f"10.{n}.0.0/16", "10.0.1.5", 0) for n in range(35)]
    )
    state = _state(subnet, router)
    prof = profile(state, state.subnets["s1"], Settings(domain="d" * 255))
    assert len(prof.options) <= options.PROFILE_MAX
    _installed(prof)


def test_server_id_of_a_single_address_subnet() -> None:
    assert server_ip(Subnet("s", 1, "v", "255.255.255.255/32", 100)) == "255.255.255.255"
    assert server_ip(Subnet("s", 1, "v", "10.0.0.0/24", 100)) == "10.0.0.1"
