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
    SG_EGRESS = 12  # IP from a port with security groups enters conntrack in the port's zone
    SG_EGRESS_RULES = 13  # its egress rules (new and established originals); replies pass
    SG_EGRESS_COMMIT = 14  # new connections committed in the port's zone
    DHCP = 15  # DHCP requests from bound ports go to the agent's responder
    ARP_RESPONDER = 20  # ARP requests for known addresses are answered here, never flooded
    L3_GATEWAY = 30  # IP sent to a router's gateway MAC: echo answered, else enter the router
    L3_ROUTING = 35  # (router, destination IP) → DVR rewrite into the destination's segment
    DVR_RESTORE = 38  # routed packets from other hosts get their gateway MAC back as source
    L2_LOOKUP = 40  # (segment, destination MAC) → local port or tunnel to the remote host
    SG_INGRESS_RULES = 45  # IP to a port with security groups: its ingress rules, after conntrack
    SG_INGRESS_COMMIT = 46  # new connections committed in the port's zone, then delivered


TABLE_NAMES: dict[int, str] = {t.value: t.name for t in Table}


class Reg:
    """Registers and what they carry between tables."""

    SEGMENT = Field.REG0  # the VNI of the packet's segment (24 bits used)
    FLAGS = Field.REG1  # bit flags below
    ROUTER = Field.REG2  # the router a packet entered (32-bit id derived from the router id)
    SG_PORT = Field.REG3  # the port whose security groups check the packet (its ofport = its zone)
    SG_RULE = Field.REG4  # the rule that allowed it (security.rule_label), committed as its ct_label


class Flag(enum.IntFlag):
    FROM_TUNNEL = 0x1  # arrived over VXLAN: never sent back to the overlay


class Priority(enum.IntEnum):
    """Priorities used in every table; higher wins."""

    DEFAULT = 0  # table miss behaviour
    FLOOD = 50  # broadcast/multicast within a segment
    FLOOD_FROM_TUNNEL = 60
    REMOTE = 90  # neighbours behind the tunnel
    DHCP_SERVER = 95  # ARP for a DHCP server id no router answers for: any real holder's answer wins
    LOCAL = 100  # local ports and exact answers
    TUNNEL = 100
    DHCP = 105  # DHCP from a port's MAC (any source IP) to the responder, above anti-spoofing
    GATEWAY_ECHO = 110  # ICMP echo to a gateway IP, above entering the router
    ROUTE = 1000  # + 10 * prefix length + min(rule priority, 9): longest prefix wins
    SG_DROP = 1  # a port's default drop in the rules tables: counted per port
    SG_BLOCK = 2  # an established connection no rule allows any more: marked blocked, dropped
    SG_RULE = 100  # + the group's slot (< SG_SLOTS): a group's plain allows (all allow, so the
    # order between groups does not matter; the slot keeps two groups' equal rules two flows)
    SG_INTO_PORT = 101  # L2_LOOKUP: IP to a port with groups goes through conntrack first
    SG_GATEWAY = 110  # echo to the port's gateway is answered whatever the rules say
    SG_COMMIT = 120  # a new connection is committed, then goes on like the others
    SG_STATELESS = 200  # + the group's slot: a stateless group's rules, before conntrack
    SG_REMOTE = 30100  # + a remote group's slot (< SG_SLOTS): its conjunction's flows
    SG_REPLY = 64000  # replies and related packets of tracked connections pass
    SG_INVALID = 65000  # conntrack said invalid: dropped


def route_priority(prefix_len: int, rule_priority: int = 0) -> int:
    """Longest prefix wins; the rule's own priority only breaks ties between equal prefixes."""
    return Priority.ROUTE + 10 * prefix_len + min(max(rule_priority, 0), 9)


# Host DVR MACs (RouterConfiguration.host_dvr_mac_address) come from this range; a routed
# packet arriving over the tunnel with such a source gets its gateway MAC back.
DVR_MAC_RANGE = ("fe:16:11:00:00:00", "ff:ff:ff:00:00:00")


VNI_BITS = 24
SG_SLOTS = 30000  # security groups in use at once: each has its priorities (and conj_id) of its own

# The route fast path (native/route.c) on the agent's internal port. A packet L3_ROUTING has no
# flow for goes there with the router (reg2) in the low 32 bits of its Ethernet source and its
# segment (reg0) in the low 24 bits of its destination, both behind this marker (0a:cb); it
# comes back rewritten, with an 802.1Q tag whose VID is the destination segment's index here.
PUNT_MAC = 0x0ACB00000000
ROUTE_VLAN_MAX = 4094  # segment indexes 1..4094: the VNIs one host can route into on demand
