"""Thin typed wrapper over the C route engine (``agent._native``, built from native/route.c).

Every call releases the GIL (cffi does) and takes the engine's own lock, so the I/O thread keeps
forwarding while Python updates tables or waits for events.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from dataclasses import dataclass

from agent.planner.flows import mac_to_int

try:
    from agent._native import ffi, lib
except ImportError as exc:  # the package was installed without its extension
    raise ImportError(f"the route engine (agent._native) is not built: {exc}") from exc

FRAME_MAX = lib.ROUTE_MAX_FRAME
PUNT_TAG = (lib.ROUTE_TAG_0 << 8) | lib.ROUTE_TAG_1  # the first two octets of both punted addresses


class EngineError(Exception):
    """The engine refused a table change; the message names it."""


class Verdict(enum.IntEnum):
    FORWARD = lib.ROUTE_FORWARD
    PUNT = lib.ROUTE_PUNT
    DROP = lib.ROUTE_DROP


@dataclass(frozen=True, slots=True)
class Punt:
    frame: bytes


@dataclass(frozen=True, slots=True)
class Hit:
    tag: int
    ip: str


def _mac(value: str) -> bytes:
    return mac_to_int(value).to_bytes(6, "big")


def _ip(value: str) -> int:
    return int(ipaddress.IPv4Address(value))


def counter_names() -> list[str]:
    return [ffi.string(lib.aca_route_counter_name(i)).decode() for i in range(lib.ROUTE_C_COUNT)]


class RouteEngine:
    """Routers by tag, segments by VNI, destinations by (tag, IP), the punt queue, counters."""

    def __init__(self, queue_cap: int = 256) -> None:
        raw = lib.aca_route_engine_new(queue_cap)
        if raw == ffi.NULL:
            raise EngineError(f"aca_route_engine_new({queue_cap}) failed")
        self._e = ffi.gc(raw, lib.aca_route_engine_free)
        self._names = counter_names()
        self._out = ffi.new("uint8_t[]", FRAME_MAX + 4)
        self._out_len = ffi.new("size_t *")

    def close(self) -> None:
        """Stop the I/O thread and free the engine now (not at garbage collection)."""
        if self._e is not None:
            ffi.release(self._e)
            self._e = None

    def clear(self) -> None:
        lib.aca_route_engine_clear(self._e)

    # ------------------------------------------------------------------ tables
    def set_router(self, tag: int, dvr_mac: str) -> None:
        if lib.aca_route_router_set(self._e, tag, _mac(dvr_mac)) != 0:
            raise EngineError(f"router {tag:#x}: rejected")

    def del_router(self, tag: int) -> None:
        lib.aca_route_router_del(self._e, tag)

    def set_segment(self, vni: int, vlan: int) -> None:
        if lib.aca_route_segment_set(self._e, vni, vlan) != 0:
            raise EngineError(f"segment {vni}: VLAN {vlan} rejected")

    def del_segment(self, vni: int) -> None:
        lib.aca_route_segment_del(self._e, vni)

    def set_dest(self, tag: int, ip: str, dst_mac: str, src_mac: str, vni: int) -> None:
        if lib.aca_route_dest_set(self._e, tag, _ip(ip), _mac(dst_mac), _mac(src_mac), vni) != 0:
            raise EngineError(f"destination {tag:#x}/{ip}: rejected")

    def del_dest(self, tag: int, ip: str) -> None:
        lib.aca_route_dest_del(self._e, tag, _ip(ip))

    def set_hit_interval(self, seconds: float) -> None:
        lib.aca_route_set_hit_interval(self._e, int(seconds * 1e9))

    # ------------------------------------------------------------------ packets
    def rewrite(self, frame: bytes) -> tuple[Verdict, bytes]:
        """Handle one punted frame as the I/O thread does (tests); the frame to send on FORWARD."""
        verdict = lib.aca_route_rewrite(self._e, frame, len(frame), self._out, FRAME_MAX + 4, self._out_len)
        return Verdict(verdict), bytes(ffi.buffer(self._out, self._out_len[0]))

    def inject(self, frame: bytes) -> Verdict:
        """Rewrite a held frame and send it to OVS on the I/O socket; raises OSError if unsent."""
        rc = lib.aca_route_inject(self._e, frame, len(frame))
        if rc < 0:
            raise OSError(-rc, f"route inject: {os.strerror(-rc)}")
        return Verdict(rc)

    def next_event(self, timeout: float) -> Punt | Hit | None:
        """The next punted frame or hit, waiting up to ``timeout`` s; None on timeout.
        Raises EOFError once ``wake`` was called."""
        ev = ffi.new("struct aca_route_event *")
        buf = ffi.new("uint8_t[]", FRAME_MAX)
        kind = lib.aca_route_next_event(self._e, ev, buf, FRAME_MAX, int(timeout * 1000))
        if kind == lib.ROUTE_EV_CLOSED:
            raise EOFError("route engine woken for shutdown")
        if kind == lib.ROUTE_EV_PUNT:
            return Punt(bytes(ffi.buffer(buf, ev.len)))
        if kind == lib.ROUTE_EV_HIT:
            return Hit(ev.tag, str(ipaddress.IPv4Address(ev.ip)))
        return None

    def wake(self) -> None:
        lib.aca_route_wake(self._e)

    def bench(self, frame: bytes, iterations: int) -> float:
        """Packets per second of the rewrite alone (a tight C loop, batches of 64 under the lock)."""
        ns = lib.aca_route_bench(self._e, frame, len(frame), iterations)
        if ns == 0:
            raise EngineError("bench frame is not forwardable (unknown destination?)")
        return iterations / (ns / 1e9)

    # ------------------------------------------------------------------ reading
    def counters(self) -> dict[str, int]:
        out = ffi.new("uint64_t[]", len(self._names))
        lib.aca_route_counters(self._e, out, len(self._names))
        return dict(zip(self._names, out, strict=True))

    def sizes(self) -> dict[str, int]:
        vals = [ffi.new("uint64_t *") for _ in range(4)]
        lib.aca_route_sizes(self._e, *vals)
        return dict(zip(("routers", "segments", "destinations", "queued"), (v[0] for v in vals), strict=True))

    # ------------------------------------------------------------------ I/O
    def start_io(self, ifname: str) -> None:
        rc = lib.aca_route_io_start(self._e, ifname.encode())
        if rc != 0:
            raise OSError(-rc, f"route fast path on {ifname}: {os.strerror(-rc)}")

    def stop_io(self) -> None:
        lib.aca_route_io_stop(self._e)

    def io_status(self) -> tuple[int, int]:
        """(1 running, 0 not started or stopped, -errno: the I/O thread ended by itself; its
        wake-up count)."""
        loops = ffi.new("uint64_t *")
        return lib.aca_route_io_status(self._e, loops), loops[0]


def punted_fields(frame: bytes) -> tuple[int, int] | None:
    """(router tag, source VNI) from a punted frame's tagged addresses, or None if untagged."""
    if len(frame) < 14 or int.from_bytes(frame[0:2], "big") != PUNT_TAG or frame[6:8] != frame[0:2]:
        return None
    return int.from_bytes(frame[8:12], "big"), int.from_bytes(frame[3:6], "big")
