"""What the responder should hold, built from desired state (pure functions).

A lease is keyed by (network id, MAC): the network id is the VNI of the DHCP entry's subnet,
the same segment the planner gives the asking port, so one MAC in two VPCs gets each VPC's
own lease. Subnet settings become a profile shared by the subnet's leases.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from agent.dhcp import options as o
from agent.model.resources import Dhcp, ResourceType, Router, Subnet
from agent.model.state import DesiredState

log = logging.getLogger("aca.dhcp")


@dataclass(frozen=True)
class Settings:
    """The agent's own DHCP settings (``[dhcp]``; config.DhcpConfig keeps them encodable)."""

    mtu: int = 1450  # overlay MTU: 1500 minus VXLAN overhead
    lease_time: int = 86400
    domain: str = ""  # option 15 unless the subnet's extra options give one


@dataclass(frozen=True)
class Profile:
    server_ip: str
    lease_time: int
    options: bytes


@dataclass(frozen=True)
class Lease:
    net_id: int
    mac: str
    ip: str
    subnet_id: str
    hostname: str = ""


def server_ip(subnet: Subnet) -> str:
    """The server identifier: the subnet's gateway, else its first address (never loopback)."""
    if subnet.gateway_ip:
        return subnet.gateway_ip
    net = ipaddress.IPv4Network(subnet.cidr, strict=False)
    return str(net.network_address + 1 if net.num_addresses > 1 else net.network_address)


def subnet_routes(state: DesiredState, subnet_id: str) -> list[tuple[str, str]]:
    """(destination, next hop) of the routers' rules for this subnet, in a stable order."""
    routes: set[tuple[str, str]] = set()
    for router in state.resources[ResourceType.ROUTER].values():
        assert isinstance(router, Router)
        for table in router.subnets:
            if table.subnet_id != subnet_id:
                continue
            for rule in table.rules:
                if rule.next_hop_ip and ":" not in rule.destination:
                    routes.add((rule.destination, rule.next_hop_ip))
    return sorted(routes, key=lambda r: (-ipaddress.IPv4Network(r[0], strict=False).prefixlen, r))


def profile(state: DesiredState, subnet: Subnet, settings: Settings) -> Profile:
    net = ipaddress.IPv4Network(subnet.cidr, strict=False)
    opts: dict[int, bytes] = {
        o.SUBNET_MASK: net.netmask.packed,
        o.MTU: settings.mtu.to_bytes(2, "big"),
        o.BROADCAST: net.broadcast_address.packed,
    }
    if subnet.gateway_ip:
        opts[o.ROUTER] = ipaddress.IPv4Address(subnet.gateway_ip).packed
    dns = [d for d in subnet.dns if ":" not in d]
    if dns:
        opts[o.DNS] = b"".join(ipaddress.IPv4Address(d).packed for d in dns[: o.MAX_DNS])
    if settings.domain:
        opts[o.DOMAIN_NAME] = settings.domain.encode()
    routes = subnet_routes(state, subnet.id)
    if routes:
        opts[o.CLASSLESS_ROUTES] = _option_121(subnet, routes)
    lease_time = settings.lease_time
    extras: dict[int, bytes] = {}
    for kv in subnet.extra_dhcp_options:
        try:
            code, raw = o.encode_extra(kv.name, kv.value)
        except o.OptionError as exc:  # decode refuses these: only rows kept by an older agent
            log.warning("event=dhcp_option_skipped subnet=%s name=%s reason=%s", subnet.id, kv.name, str(exc))
            continue
        if code == o.LEASE_TIME:
            lease_time = int.from_bytes(raw, "big")
        else:
            extras[code] = raw
    if o.profile_size(extras) > o.PROFILE_MAX:  # likewise: decode keeps new subnets within it
        log.warning('event=dhcp_options_skipped subnet=%s reason="profile too large"', subnet.id)
        extras = {}
    return Profile(server_ip(subnet), lease_time, o.tlvs({**opts, **extras}))


def _option_121(subnet: Subnet, routes: list[tuple[str, str]]) -> bytes:
    """The routers' routes for the subnet, most specific first, within one option (255 bytes).

    Decode keeps one router's table for a subnet within it; several routers, or rules added by
    DELTA updates, can add up to more: the least specific routes are left out, and logged.
    Clients that take option 121 ignore option 3 (RFC 3442), so the default route always stays."""
    default = [r for r in routes if r[0].endswith("/0")][:1]
    if not default and subnet.gateway_ip:
        default = [("0.0.0.0/0", subnet.gateway_ip)]
    budget = o.TLV_MAX - len(o.classless_routes(default))
    kept: list[tuple[str, str]] = []
    size = 0
    for route in routes:
        if route[0].endswith("/0"):
            continue
        size += len(o.classless_routes([route]))
        if size > budget:
            break
        kept.append(route)
    left_out = len(routes) - len(kept) - len([r for r in routes if r[0].endswith("/0")])
    if left_out:
        log.warning("event=dhcp_routes_left_out subnet=%s routes=%d kept=%d", subnet.id, left_out, len(kept))
    return o.classless_routes(kept + default)


def lease(state: DesiredState, entry: Dhcp) -> Lease | None:
    """The lease a DHCP entry asks for; None when it cannot be served (no IPv4, DHCP off)."""
    subnet = state.subnets.get(entry.subnet_id)
    if subnet is None or not entry.ipv4 or not subnet.dhcp_enable or not subnet.tunnel_id:
        return None
    return Lease(subnet.tunnel_id, entry.mac.lower(), entry.ipv4, subnet.id, entry.hostname)
