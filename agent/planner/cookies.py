"""Cookie layout: who owns a flow, so the agent can find and clean up its own flows.

    bits 63..60  layout tag 0xA (this agent's flows; anything else on the bridge is not ours)
    bits 59..52  kind (the owner's resource kind)
    bits 51..40  reserved (0)
    bits 39..0   object id: 40 bits of BLAKE2b over the owner's id

No per-restart generation: on restart the agent reads the installed flows and diffs them
against the desired state, so unchanged flows are neither rewritten nor swept (a generation
would force a rewrite of every flow at each restart).
"""

from __future__ import annotations

import enum
import functools
import hashlib

LAYOUT_TAG = 0xA
TAG_SHIFT = 60
KIND_SHIFT = 52
OBJECT_BITS = 40
AGENT_MASK = 0xF << TAG_SHIFT
OWNER_MASK = AGENT_MASK | (0xFF << KIND_SHIFT) | ((1 << OBJECT_BITS) - 1)


class Kind(enum.IntEnum):
    BASE = 1  # pipeline skeleton: table misses, tunnel classification
    PORT = 2
    NEIGHBOR = 3
    SEGMENT = 4  # per-VNI flooding
    ROUTER = 5  # gateways, router entry, DVR restore, static routes
    DHCP = 6  # a port's DHCP steering to the responder (leases carry no flows)
    ROUTE = 7  # a segment's re-entry from the route fast path (802.1Q index → VNI)
    ROUTE_CACHE = 8  # on-demand host routes with an idle timeout: never reconciled, never swept
    SECURITY = 9  # a port's security-group flows (each rule's flows with a cookie of its own)


@functools.lru_cache(maxsize=1 << 17)
def object_id(owner_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(owner_id.encode(), digest_size=5).digest(), "big")


def cookie(kind: Kind, owner_id: str) -> int:
    return (LAYOUT_TAG << TAG_SHIFT) | (int(kind) << KIND_SHIFT) | object_id(owner_id)


def kind_of(value: int) -> Kind | None:
    if value >> TAG_SHIFT != LAYOUT_TAG:
        return None
    try:
        return Kind((value >> KIND_SHIFT) & 0xFF)
    except ValueError:
        return None


def is_ours(value: int) -> bool:
    return value >> TAG_SHIFT == LAYOUT_TAG
