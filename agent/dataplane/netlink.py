"""What the kernel's netlink owns: addresses, routes and link state of this network namespace.

The agent only checks the underlay (is the tunnel source address configured, how is a remote
host reached) and brings up links it created; OVSDB and OpenFlow cover everything else.
"""

from __future__ import annotations

import ipaddress
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


class NetlinkOpError(Exception):
    """A netlink request failed; the message names the request."""


def underlay_address_present(ip: str) -> bool:
    """True if ``ip`` is configured on some interface here (VXLAN ``local_ip`` must be)."""
    wanted = ipaddress.ip_address(ip)
    family = socket.AF_INET if wanted.version == 4 else socket.AF_INET6
    with IPRoute() as ipr:
        return any(
            ipaddress.ip_address(msg.get("IFA_ADDRESS")) == wanted
            for msg in ipr.get_addr(family=family)
            if msg.get("IFA_ADDRESS")
        )


def set_link(ifname: str, up: bool = True, mtu: int | None = None) -> None:
    """Set admin state (and MTU) of ``ifname``; raises NetlinkOpError if it does not exist."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise NetlinkOpError(f"set link {ifname}: no such interface")
        attrs: dict[str, object] = {"state": "up" if up else "down"}
        if mtu is not None:
            attrs["mtu"] = mtu
        try:
            ipr.link("set", index=found[0], **attrs)
        except NetlinkError as e:
            raise NetlinkOpError(f"set link {ifname} {attrs}: {e}") from e
