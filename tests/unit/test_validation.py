"""Decode + validate: every resource type, good and bad (table tests)."""

from __future__ import annotations

import logging

import pytest

from agent._pb import goalstate_pb2 as pb
from agent.model.decode import decode_state, decode_v1, decode_v2
from agent.model.resources import Op, ResourceType
from agent.sandbox import goalstates as gs


def _decode(rtype: ResourceType, state) -> str:
    return decode_state(rtype, state).error


GOOD = [
    (ResourceType.VPC, gs.vpc("v1", 100)),
    (ResourceType.SUBNET, gs.subnet("s1", "v1", "10.0.1.0/24", 100, "10.0.1.1", "aa:bb:cc:00:00:01")),
    (ResourceType.PORT, gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05")),
    (ResourceType.NEIGHBOR, gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12")),
    (ResourceType.DHCP, gs.dhcp("d1", "s1", "fa:16:3e:00:00:05", "10.0.1.5")),
]


@pytest.mark.parametrize(("rtype", "state"), GOOD)
def test_valid_resources_decode(rtype: ResourceType, state) -> None:
    assert _decode(rtype, state) == ""


def _with(state, **changes):
    copy = type(state)()
    copy.CopyFrom(state)
    for path, value in changes.items():
        target = copy.configuration
        *parents, leaf = path.split("__")
        for p in parents:
            target = getattr(target, p)
            if hasattr(target, "add") and not hasattr(target, "ip_address"):
                target = target[0]
        setattr(target, leaf, value)
    return copy


BAD = [
    (ResourceType.VPC, _with(GOOD[0][1], cidr="10.0.0.0/33"), "not a CIDR"),
    (ResourceType.VPC, _with(GOOD[0][1], tunnel_id=1 << 24), "not a VNI"),
    (ResourceType.SUBNET, _with(GOOD[1][1], cidr="banana"), "not a CIDR"),
    (ResourceType.SUBNET, _with(GOOD[1][1], cidr=""), "cidr is required"),
    (ResourceType.SUBNET, _with(GOOD[1][1], tunnel_id=0), "not a VNI"),
    (ResourceType.SUBNET, _with(GOOD[1][1], gateway__ip_address="10.9.9.9"), "outside"),
    (ResourceType.SUBNET, _with(GOOD[1][1], gateway__mac_address="zz:bb:cc:00:00:01"), "not a MAC"),
    (ResourceType.PORT, _with(GOOD[2][1], mac_address="fa:16:3e:00:00"), "not a MAC"),
    (ResourceType.PORT, _with(GOOD[2][1], mac_address="01:00:5e:00:00:01"), "multicast"),
    (ResourceType.PORT, _with(GOOD[2][1], mac_address=""), "mac_address is required"),
    (ResourceType.PORT, _with(GOOD[2][1], fixed_ips__ip_address="10.0.1.300"), "not an IPv4"),
    (ResourceType.PORT, _with(GOOD[2][1], host_info__ip_address="nope"), "not an IPv4"),
    (ResourceType.NEIGHBOR, _with(GOOD[3][1], host_ip_address=""), "host_ip_address is required"),
    (ResourceType.NEIGHBOR, _with(GOOD[3][1], fixed_ips__ip_address="x"), "not an IPv4"),
    (ResourceType.DHCP, _with(GOOD[4][1], ipv4_address="10.0.1"), "not an IPv4"),
    (ResourceType.DHCP, _with(GOOD[4][1], subnet_id=""), "subnet_id is required"),
    # What the planner and the DHCP engine cannot program is refused here, with the reason.
    (ResourceType.SUBNET, _with(GOOD[1][1], cidr="fd00::/64"), "fd00::/64: IPv6 is not supported"),
    (ResourceType.SUBNET, _with(GOOD[1][1], gateway__ip_address="fd00::1"), "IPv6 is not supported"),
    (ResourceType.PORT, _with(GOOD[2][1], fixed_ips__ip_address="fd00::5"), "IPv6 is not supported"),
    (ResourceType.NEIGHBOR, _with(GOOD[3][1], host_ip_address="fd00::1"), "IPv6 is not supported"),
    (ResourceType.NEIGHBOR, _with(GOOD[3][1], host_ip_address="0.0.0.0"), "not a unicast address"),
    (ResourceType.NEIGHBOR, _with(GOOD[3][1], host_ip_address="239.1.1.1"), "not a unicast address"),
    (ResourceType.NEIGHBOR, _with(GOOD[3][1], host_ip_address="255.255.255.255"), "not a unicast address"),
    (
        ResourceType.DHCP,
        _with(GOOD[4][1], ipv6_address="fd00::5"),
        "ipv6_address fd00::5: IPv6 is not supported",
    ),
    (ResourceType.DHCP, _with(GOOD[4][1], ipv4_address=""), "ipv4_address is required"),
    (ResourceType.DHCP, _with(GOOD[4][1], port_host_name="h" * 256), "port_host_name"),
    (ResourceType.DHCP, _with(GOOD[4][1], port_host_name="a\0b"), "port_host_name"),
]


@pytest.mark.parametrize(("rtype", "state", "reason"), BAD)
def test_invalid_resources_carry_a_reason(rtype: ResourceType, state, reason: str) -> None:
    assert reason in _decode(rtype, state)


def test_router_and_security_group_validation() -> None:
    router = pb.RouterState(operation_type=pb.CREATE)
    router.configuration.id = "r1"
    router.configuration.host_dvr_mac_address = "fe:16:11:00:00:01"
    table = router.configuration.subnet_routing_tables.add(subnet_id="s1")
    table.routing_rules.add(id="rule", destination="10.1.0.0/16", next_hop_ip="10.0.1.5")
    assert decode_state(ResourceType.ROUTER, router).error == ""
    table.routing_rules[0].destination = "10.1.0.0/99"
    assert "route destination" in decode_state(ResourceType.ROUTER, router).error
    sg = pb.SecurityGroupState(operation_type=pb.CREATE)
    sg.configuration.id = "sg"
    sg.configuration.security_group_rules.add(id="r", port_range_min=80, port_range_max=22)
    assert "port_range_min" in decode_state(ResourceType.SECURITYGROUP, sg).error


def test_empty_id_and_delete_without_body() -> None:
    assert (
        decode_state(ResourceType.PORT, pb.PortState(operation_type=pb.CREATE)).error
        == "resource id is empty"
    )
    delete = pb.PortState(operation_type=pb.DELETE)
    delete.configuration.id = "p1"
    req = decode_state(ResourceType.PORT, delete)
    assert (req.op, req.id, req.error) == (Op.DELETE, "p1", "")


def test_v2_neighbor_keys_and_host_selection() -> None:
    msg = gs.goal_state_v2(
        gs.subnet("s1", "v1", "10.0.1.0/24", 100),
        gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12"),
        host_ip="172.31.0.11",
    )
    msg.neighbor_states["L2/n1"].configuration.id = ""  # id only in the map key
    requests = {(r.type, r.id): r for r in decode_v2(msg, "172.31.0.11")}
    assert requests[(ResourceType.NEIGHBOR, "n1")].acted_on
    assert not requests[(ResourceType.SUBNET, "s1")].acted_on  # INFO: context only
    other = decode_v2(msg, "172.31.0.99")  # host not listed: everything is for us
    assert {r.type for r in other if r.acted_on} == {ResourceType.NEIGHBOR}


def test_v1_keeps_every_state() -> None:
    msg = gs.goal_state_v1(*(state for _t, state in GOOD))
    assert [r.type for r in decode_v1(msg)] == [t for t, _s in GOOD]


def test_unknown_operation_type_is_invalid_and_answered() -> None:
    state = gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05")
    state.operation_type = 99
    req = decode_state(ResourceType.PORT, state)
    assert req.acted_on and "unknown operation_type 99" in req.error


def _port_with_pairs(*pairs: tuple[str, str]):
    return gs.port("p1", "v1", "s1", "10.0.1.5", "fa:16:3e:00:00:05", pairs=pairs)


@pytest.mark.parametrize(
    ("pair", "reason"),
    [
        (("fd00::5/128", ""), "allowed address pair fd00::5/128: IPv6 is not supported by this agent"),
        (("fd00::5", ""), "allowed address pair fd00::5: IPv6 is not supported by this agent"),
        (("10.0.1.0/33", ""), "not a CIDR"),
    ],
)
def test_allowed_address_pairs_are_ipv4(pair: tuple[str, str], reason: str) -> None:
    assert reason in _decode(ResourceType.PORT, _port_with_pairs(pair))
    neighbor = gs.neighbor("n1", "v1", "s1", "10.0.1.6", "fa:16:3e:00:00:06", "172.31.0.12")
    neighbor.configuration.allow_address_pairs.add(ip_address=pair[0])
    assert reason in _decode(ResourceType.NEIGHBOR, neighbor)


def test_allowed_address_pairs_keep_within_the_dhcp_engines_macs() -> None:
    pairs = [("10.0.1.9", f"fa:16:3f:00:{n >> 8:02x}:{n & 0xFF:02x}") for n in range(1023)]
    assert _decode(ResourceType.PORT, _port_with_pairs(*pairs)) == ""  # 1,024 with the port's own
    pairs.append(("10.0.1.9", "fa:16:3e:01:00:00"))
    assert "1025 MACs" in _decode(ResourceType.PORT, _port_with_pairs(*pairs))


def _subnet_with(options: list[tuple[str, str]] = (), dns: list[str] = ()):  # type: ignore[assignment]
    state = gs.subnet("s1", "v1", "10.0.1.0/24", 100, "10.0.1.1", "aa:bb:cc:00:00:01", dns=dns)
    for name, value in options:
        state.configuration.extra_dhcp_options.add(name=name, value=value)
    return state


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        (("mtu", "70000"), "extra DHCP option mtu=70000: 70000 is not in 0..65535"),
        (("mtu", "60"), "60 is below 68"),
        (("mtu", "-1"), "'-1' is not a number"),
        (("default-ttl", "0"), "0 is below 1"),
        (("lease-time", "4294967296"), "not in 0..4294967295"),
        (("router", "10.0.1.1,fd00::1"), "'fd00::1' is not an IPv4 address"),
        (("ip-forward-enable", "maybe"), "'maybe' is not a boolean"),
        (("domain-name", ""), "encodes to 0 bytes"),
        (("tftp-server", "t" * 256), "encodes to 256 bytes"),
        (("domain-search", "a" * 64 + ".example"), "bad label"),
        (("classless-static-route", "fd00::/64,10.0.1.1"), "route"),
        (("classless-static-route", " ".join(f"10.{n}.0.0/16,10.0.1.1" for n in range(37))), "bytes"),
        (("no-such-option", "1"), "unknown option name"),
        (("option:54", "10.0.1.1"), "set by the agent"),
        (("option:255", "x"), "not an option code"),
        (("option:²", "x"), "unknown option name"),
    ],
)
def test_extra_dhcp_options_fit_their_kind(option: tuple[str, str], reason: str) -> None:
    error = _decode(ResourceType.SUBNET, _subnet_with([option]))
    assert error.startswith(f"extra DHCP option {option[0]}=")
    assert reason in error


def test_good_extra_dhcp_options_pass() -> None:
    options = [
        ("mtu", " 1400 "), ("lease-time", "600"), ("router", "10.0.1.1"), ("ntp-server", "10.0.1.2 10.0.1.3"),
        ("domain-search", "a.example,b.example"), ("ip-forward-enable", "off"), ("option:252", "http://wpad"),
        ("classless-static-route", "10.2.0.0/16,10.0.1.1"),
    ]  # fmt: skip
    assert _decode(ResourceType.SUBNET, _subnet_with(options)) == ""


def test_a_subnet_profile_stays_within_the_dhcp_engine() -> None:
    # What the agent adds itself takes at most 602 bytes: 598 are left for extra options.
    big = [(f"option:{code}", "x" * 200) for code in (224, 225)]
    assert _decode(ResourceType.SUBNET, _subnet_with([*big, ("option:226", "x" * 192)])) == ""
    error = _decode(ResourceType.SUBNET, _subnet_with([*big, ("option:226", "x" * 193)]))
    assert "profile could reach 1201 bytes, the DHCP engine takes at most 1200" in error


def test_ipv4_dns_entries_fit_one_option() -> None:
    many = [f"10.0.1.{n}" for n in range(2, 19)]
    assert "17 IPv4 servers" in _decode(ResourceType.SUBNET, _subnet_with(dns=many))
    # IPv6 servers are not for DHCPv4: kept, not counted, not handed out
    assert _decode(ResourceType.SUBNET, _subnet_with(dns=[*many[:16], "fd00::53"])) == ""
    assert "not an IP address" in _decode(ResourceType.SUBNET, _subnet_with(dns=["10.0.1"]))


def test_router_routes_are_ipv4_and_fit_option_121() -> None:
    def router(destinations: list[str]):
        routes = [("s1", d, "10.0.1.5", 0) for d in destinations]
        return gs.router("r1", "fe:16:11:00:00:01", ["s1"], routes)

    assert "route destination fd00::/64: IPv6 is not supported" in _decode(
        ResourceType.ROUTER, router(["fd00::/64"])
    )
    # a /16 takes 7 bytes, the default route 5: 35 routes fit in 255 bytes, 36 do not
    fits = [f"10.{n}.0.0/16" for n in range(35)]
    assert _decode(ResourceType.ROUTER, router(fits)) == ""
    error = _decode(ResourceType.ROUTER, router([*fits, "10.200.0.0/16"]))
    assert "routing table of subnet s1: its routes take 257 bytes in DHCP option 121" in error


def test_a_refused_context_resource_is_logged_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    """A subnet sent as context (INFO) gets no status; its ports only say it is unknown."""
    subnet = _subnet_with([("mtu", "70000")])
    subnet.operation_type = pb.INFO
    with caplog.at_level(logging.WARNING, "aca.decode"):
        req = decode_state(ResourceType.SUBNET, subnet)
    assert not req.acted_on and "mtu=70000" in req.error
    assert "event=context_rejected id=s1 type=SUBNET reason=" in caplog.text and "mtu=70000" in caplog.text
