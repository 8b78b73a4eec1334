"""The OpenFlow pipeline, declared once: tables, registers and flags by name.

Builders use these names, never raw numbers; ``docs/pipeline.md`` is checked against this
declaration by a test, so the doc stays true.
"""

from __future__ import annotations

import enum

from agent.planner.flows import Field


class Table(enum.IntEnum):
    """Table ids, in the order a packet walks them."""

    CLASSIFY = 0  # where did it come from: a bound VM port or the tunnel; set the segment
    PORT_SECURITY = 10  # a VM may send only from its own MAC/IPs (and allowed pairs)
    DHCP = 15  # DHCP requests from bound ports go to the agent's responder
    ARP_RESPONDER = 20  # ARP requests for known addresses are answered here, never flooded
    L2_LOOKUP = 40  # (segment, destination MAC) → local port or tunnel to the remote host


TABLE_NAMES: dict[int, str] = {t.value: t.name for t in Table}


class Reg:
    """Registers and what they carry between tables."""

    SEGMENT = Field.REG0  # the VNI of the packet's segment (24 bits used)
    FLAGS = Field.REG1  # bit flags below


class Flag(enum.IntFlag):
    FROM_TUNNEL = 0x1  # arrived over VXLAN: never sent back to the overlay


class Priority(enum.IntEnum):
    """Priorities used in every table; higher wins."""

    DEFAULT = 0  # table miss behaviour
    FLOOD = 50  # broadcast/multicast within a segment
    FLOOD_FROM_TUNNEL = 60
    REMOTE = 90  # neighbours behind the tunnel
    LOCAL = 100  # local ports and exact answers
    TUNNEL = 100


VNI_BITS = 24
