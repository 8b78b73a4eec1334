"""Syntax checks for addresses, so decode can reject a resource with a reason, not an exception."""

from __future__ import annotations

import functools
import ipaddress
import re
import socket

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
MAX_VNI = (1 << 24) - 1


class Invalid(ValueError):
    """A resource field is malformed; the message is the reason reported for INVALID_ARG."""


def mac(value: str, what: str = "mac_address") -> str:
    if not _MAC.match(value):
        raise Invalid(f"{what} {value!r} is not a MAC address")
    if int(value[:2], 16) & 1:
        raise Invalid(f"{what} {value!r} is a multicast MAC")
    return value.lower()


NO_IPV6 = "IPv6 is not supported by this agent"
# native/dhcp.h DHCP_MAX_PORT_MACS: the MACs one port may ask DHCP for (a test keeps them equal).
MAX_PORT_MACS = 1024


def _is_ipv6(value: str) -> bool:
    try:
        return ipaddress.ip_network(value, strict=False).version == 6
    except ValueError:
        return False


def ipv4(value: str, what: str = "ip_address") -> str:
    """Strict dotted quad (inet_pton: no short forms, no leading zeros), normalised."""
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, value))
    except (OSError, ValueError):
        if _is_ipv6(value):
            raise Invalid(f"{what} {value}: {NO_IPV6}") from None
        raise Invalid(f"{what} {value!r} is not an IPv4 address") from None


@functools.lru_cache(maxsize=4096)
def unicast_ipv4(value: str, what: str = "ip_address") -> str:
    """An address a VXLAN packet can be sent to (not 0.0.0.0, loopback, multicast, or 240/4 with
    the broadcast address). Cached: a big goal state names a few hosts thousands of times."""
    normal = ipv4(value, what)
    first = int(normal.split(".", 1)[0])
    if normal == "0.0.0.0" or first == 127 or first >= 224:
        raise Invalid(f"{what} {value} is not a unicast address")
    return normal


def ip_any(value: str, what: str = "ip_address") -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise Invalid(f"{what} {value!r} is not an IP address") from None


def cidr(value: str, what: str = "cidr") -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise Invalid(f"{what} {value!r} is not a CIDR") from None


def ipv4_cidr(value: str, what: str = "cidr") -> str:
    """An IPv4 network (host bits cleared): what flows can match and DHCP can describe."""
    network = cidr(value, what)
    if ":" in network:
        raise Invalid(f"{what} {value}: {NO_IPV6}")
    return network


def ipv4_or_cidr(value: str, what: str = "ip_address") -> str:
    return ipv4_cidr(value, what) if "/" in value else ipv4(value, what)


def vni(value: int, what: str = "tunnel_id") -> int:
    if not 0 < value <= MAX_VNI:
        raise Invalid(f"{what} {value} is not a VNI (1..{MAX_VNI})")
    return value


def required(value: str, what: str) -> str:
    if not value:
        raise Invalid(f"{what} is required")
    return value


def in_cidr(ip: str, network: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(network, strict=False)
