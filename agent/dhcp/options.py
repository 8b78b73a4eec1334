"""DHCP option encoding (RFC 2132, RFC 3442) for subnet profiles handed to the C engine.

A profile is the TLV list every client of a subnet may receive; the engine adds the
per-message options (53, 54, 51, 58, 59) and the lease's hostname (12), and filters by the
client's parameter request list.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import struct
from collections.abc import Callable, Iterable

log = logging.getLogger("aca.dhcp")

SUBNET_MASK = 1
ROUTER = 3
DNS = 6
HOSTNAME = 12
DOMAIN_NAME = 15
MTU = 26
BROADCAST = 28
LEASE_TIME = 51
CLASSLESS_ROUTES = 121


class Kind(enum.Enum):
    IPS = "ips"  # one or more IPv4 addresses
    IP = "ip"
    TEXT = "text"
    U8 = "u8"
    U16 = "u16"
    U32 = "u32"
    BOOL = "bool"
    ROUTES = "routes"  # "dest/len,gateway" pairs, RFC 3442
    DOMAINS = "domains"  # RFC 1035 names (option 119)


# extra_dhcp_options names (Neutron/dnsmasq spelling, plus RFC 2132 names) → (code, kind).
KNOWN: dict[str, tuple[int, Kind]] = {
    "subnet-mask": (1, Kind.IP),
    "netmask": (1, Kind.IP),
    "router": (3, Kind.IPS),
    "dns-server": (6, Kind.IPS),
    "domain-name-servers": (6, Kind.IPS),
    "log-server": (7, Kind.IPS),
    "domain-name": (15, Kind.TEXT),
    "root-path": (17, Kind.TEXT),
    "ip-forward-enable": (19, Kind.BOOL),
    "default-ttl": (23, Kind.U8),
    "mtu": (26, Kind.U16),
    "interface-mtu": (26, Kind.U16),
    "broadcast": (28, Kind.IP),
    "broadcast-address": (28, Kind.IP),
    "ntp-server": (42, Kind.IPS),
    "netbios-ns": (44, Kind.IPS),
    "netbios-nodetype": (46, Kind.U8),
    "lease-time": (51, Kind.U32),
    "tftp-server": (66, Kind.TEXT),
    "tftp-server-name": (66, Kind.TEXT),
    "bootfile-name": (67, Kind.TEXT),
    "domain-search": (119, Kind.DOMAINS),
    "classless-static-route": (121, Kind.ROUTES),
}
CODE_KINDS: dict[int, Kind] = {code: kind for code, kind in KNOWN.values()}
# Set by the engine per message or per lease: never taken from extra options.
RESERVED = frozenset({0, 12, 50, 52, 53, 54, 55, 57, 58, 59, 61, 255})


class OptionError(ValueError):
    """An extra DHCP option's value does not fit its kind."""


def _ips(value: str) -> bytes:
    items = [v for v in value.replace(";", ",").replace(" ", ",").split(",") if v]
    if not items:
        raise OptionError("no address")
    return b"".join(ipaddress.IPv4Address(v).packed for v in items)


def classless_routes(routes: Iterable[tuple[str, str]]) -> bytes:
    """RFC 3442 encoding: prefix length, the significant octets of the destination, the router."""
    out = bytearray()
    for dest, gateway in routes:
        net = ipaddress.IPv4Network(dest, strict=False)
        width = (net.prefixlen + 7) // 8
        out += bytes([net.prefixlen]) + net.network_address.packed[:width]
        out += ipaddress.IPv4Address(gateway).packed
    return bytes(out)


def _routes(value: str) -> bytes:
    pairs = []
    for item in value.replace(";", " ").split():
        dest, _, gateway = item.partition(",")
        if not gateway:
            raise OptionError(f"route {item!r}: expected dest/len,gateway")
        pairs.append((dest, gateway))
    return classless_routes(pairs)


def _domains(value: str) -> bytes:
    out = bytearray()
    for name in value.replace(",", " ").split():
        for label in name.strip(".").split("."):
            raw = label.encode("idna")
            if not 0 < len(raw) < 64:
                raise OptionError(f"bad label in {name!r}")
            out += bytes([len(raw)]) + raw
        out += b"\0"
    return bytes(out)


_ENCODERS: dict[Kind, Callable[[str], bytes]] = {
    Kind.IPS: _ips,
    Kind.IP: lambda v: ipaddress.IPv4Address(v.strip()).packed,
    Kind.TEXT: lambda v: v.encode(),
    Kind.U8: lambda v: struct.pack("!B", int(v)),
    Kind.U16: lambda v: struct.pack("!H", int(v)),
    Kind.U32: lambda v: struct.pack("!I", int(v)),
    Kind.BOOL: lambda v: b"\1" if v.strip().lower() in ("1", "true", "yes", "on") else b"\0",
    Kind.ROUTES: _routes,
    Kind.DOMAINS: _domains,
}


def extra_option(name: str, value: str) -> tuple[int, bytes] | None:
    """(code, encoded value) of a named or numeric extra option; None (logged) if unknown or bad."""
    key = name.strip().lower()
    if key.startswith("option:"):
        key = key[len("option:") :]
    if key.isdigit():
        code = int(key)
        kind = CODE_KINDS.get(code, Kind.TEXT)
    elif key in KNOWN:
        code, kind = KNOWN[key]
    else:
        log.warning("event=dhcp_option_unknown name=%r", name)
        return None
    if not 0 < code < 255 or code in RESERVED:
        log.warning("event=dhcp_option_reserved name=%r code=%d", name, code)
        return None
    try:
        raw = _ENCODERS[kind](value)
    except (ValueError, UnicodeError) as exc:
        log.warning("event=dhcp_option_invalid name=%r value=%r error=%r", name, value, str(exc))
        return None
    if not 0 < len(raw) <= 255:
        log.warning("event=dhcp_option_invalid name=%r value=%r error='length'", name, value)
        return None
    return code, raw


def tlvs(options: dict[int, bytes]) -> bytes:
    """The options as one TLV string, in ascending code order."""
    return b"".join(bytes([code, len(raw)]) + raw for code, raw in sorted(options.items()))
