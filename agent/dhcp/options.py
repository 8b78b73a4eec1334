"""DHCP option encoding (RFC 2132, RFC 3442) for subnet profiles handed to the C engine.

A profile is the TLV list every client of a subnet may receive; the engine adds the
per-message options (53, 54, 51, 58, 59) and the lease's hostname (12), and filters by the
client's parameter request list.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable

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
    """An extra DHCP option cannot be handed out as given; the message says why."""


TLV_MAX = 255  # one option's value (RFC 2132: a one-octet length)
PROFILE_MAX = 1200  # encoded options per subnet profile: native/dhcp.h DHCP_MAX_PROFILE_OPTIONS
# The most the agent itself puts in a profile, per code (extra options of the same code replace
# it): mask, MTU, broadcast, router, 16 DNS servers, the configured domain, option 121.
MAX_DNS = 16
AGENT_OPTIONS_MAX: dict[int, int] = {
    SUBNET_MASK: 4,
    MTU: 2,
    BROADCAST: 4,
    ROUTER: 4,
    DNS: 4 * MAX_DNS,
    DOMAIN_NAME: TLV_MAX,
    CLASSLESS_ROUTES: TLV_MAX,
}
# Smallest meaningful values: RFC 2132 (MTU >= 68, a TTL is never 0), a lease of at least 1 s.
_MINIMUM: dict[int, int] = {MTU: 68, 23: 1, LEASE_TIME: 1}


def _ipv4(value: str) -> bytes:
    try:
        return ipaddress.IPv4Address(value.strip()).packed
    except ValueError:
        raise OptionError(f"{value.strip()!r} is not an IPv4 address") from None


def _ips(value: str) -> bytes:
    items = [v for v in value.replace(";", ",").replace(" ", ",").split(",") if v]
    if not items:
        raise OptionError("no address")
    return b"".join(_ipv4(v) for v in items)


def classless_routes(routes: Iterable[tuple[str, str]]) -> bytes:
    """RFC 3442 encoding: prefix length, the significant octets of the destination, the router."""
    out = bytearray()
    for dest, gateway in routes:
        net = ipaddress.IPv4Network(dest, strict=False)
        width = (net.prefixlen + 7) // 8
        out += bytes([net.prefixlen]) + net.network_address.packed[:width]
        out += ipaddress.IPv4Address(gateway).packed
    return bytes(out)


DEFAULT_ROUTE_SIZE = 5  # 0.0.0.0/0 in option 121: the prefix length (0), no octets, the router


def _routes(value: str) -> bytes:
    pairs = []
    for item in value.replace(";", " ").split():
        dest, _, gateway = item.partition(",")
        if not gateway:
            raise OptionError(f"route {item!r}: expected dest/len,gateway")
        pairs.append((dest, gateway))
    try:
        return classless_routes(pairs)
    except ValueError as exc:
        raise OptionError(f"route: {exc}") from None


def _domains(value: str) -> bytes:
    out = bytearray()
    for name in value.replace(",", " ").split():
        for label in name.strip(".").split("."):
            try:
                raw = label.encode("idna")
            except UnicodeError:
                raise OptionError(f"bad label in {name!r}") from None
            if not 0 < len(raw) < 64:
                raise OptionError(f"bad label in {name!r}")
            out += bytes([len(raw)]) + raw
        out += b"\0"
    return bytes(out)


def _uint(width: int) -> Callable[[str], bytes]:
    def encode(value: str) -> bytes:
        text = value.strip()
        if not (text.isascii() and text.isdigit()):
            raise OptionError(f"{text!r} is not a number")
        number = int(text)
        if number >= 1 << (8 * width):
            raise OptionError(f"{number} is not in 0..{(1 << (8 * width)) - 1}")
        return number.to_bytes(width, "big")

    return encode


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(value: str) -> bytes:
    word = value.strip().lower()
    if word not in _TRUE + _FALSE:
        raise OptionError(f"{value.strip()!r} is not a boolean")
    return b"\1" if word in _TRUE else b"\0"


def _text(value: str) -> bytes:
    return value.encode()


_ENCODERS: dict[Kind, Callable[[str], bytes]] = {
    Kind.IPS: _ips,
    Kind.IP: _ipv4,
    Kind.TEXT: _text,
    Kind.U8: _uint(1),
    Kind.U16: _uint(2),
    Kind.U32: _uint(4),
    Kind.BOOL: _bool,
    Kind.ROUTES: _routes,
    Kind.DOMAINS: _domains,
}


def _code_and_kind(name: str) -> tuple[int, Kind]:
    key = name.strip().lower()
    if key.startswith("option:"):
        key = key[len("option:") :]
    if key.isascii() and key.isdigit():
        code = int(key)
        kind = CODE_KINDS.get(code, Kind.TEXT)
    elif key in KNOWN:
        code, kind = KNOWN[key]
    else:
        raise OptionError("unknown option name")
    if not 0 < code < 255:
        raise OptionError(f"code {code} is not an option code (1..254)")
    if code in RESERVED:
        raise OptionError(f"option {code} is set by the agent per message")
    return code, kind


def encode_extra(name: str, value: str) -> tuple[int, bytes]:
    """(code, encoded value) of a named or numeric extra option; OptionError says why not."""
    code, kind = _code_and_kind(name)
    raw = _ENCODERS[kind](value)
    if not 0 < len(raw) <= TLV_MAX:
        raise OptionError(f"encodes to {len(raw)} bytes (1..{TLV_MAX})")
    least = _MINIMUM.get(code)
    if least is not None and int.from_bytes(raw, "big") < least:
        raise OptionError(f"{int.from_bytes(raw, 'big')} is below {least}")
    return code, raw


def profile_size(extras: dict[int, bytes]) -> int:
    """The largest profile these extra options can end up in, whatever the agent adds around
    them (option 51 is not an option of the profile: it becomes the lease time)."""
    sizes = {**AGENT_OPTIONS_MAX, **{code: len(raw) for code, raw in extras.items()}}
    sizes.pop(LEASE_TIME, None)
    return sum(2 + size for size in sizes.values())


def tlvs(options: dict[int, bytes]) -> bytes:
    """The options as one TLV string, in ascending code order."""
    return b"".join(bytes([code, len(raw)]) + raw for code, raw in sorted(options.items()))
