"""Thin typed wrapper over the C engine (``agent._native``, built from native/dhcp.c by cffi).

Every call releases the GIL (cffi does) and takes the engine's own lock, so the I/O thread keeps
answering while Python updates tables.
"""

from __future__ import annotations

import ipaddress
import os
import time

from agent.planner.flows import mac_to_int

try:
    from agent._native import ffi, lib
except ImportError as exc:  # the package was installed without its extension
    raise ImportError(f"the DHCP engine (agent._native) is not built: {exc}") from exc

FRAME_MAX = 2048


class EngineError(Exception):
    """The engine refused a table change; the message names it."""


def _ip(value: str) -> int:
    return int(ipaddress.IPv4Address(value))


def _mac(value: str) -> bytes:
    return mac_to_int(value).to_bytes(6, "big")


def counter_names() -> list[str]:
    return [ffi.string(lib.dhcp_counter_name(i)).decode() for i in range(lib.DHCP_C_COUNT)]


class Engine:
    """One responder: subnet profiles, leases by (network, MAC), ports by ofport, counters."""

    def __init__(self) -> None:
        self._e = ffi.gc(lib.dhcp_engine_new(), lib.dhcp_engine_free)
        if self._e == ffi.NULL:
            raise MemoryError("dhcp_engine_new")
        self._names = counter_names()
        self._out = ffi.new("uint8_t[]", FRAME_MAX)

    def close(self) -> None:
        """Stop the I/O thread and free the engine now (not at garbage collection)."""
        if self._e is not None:
            ffi.release(self._e)
            self._e = None

    def clear(self) -> None:
        lib.dhcp_engine_clear(self._e)

    # ------------------------------------------------------------------ tables
    def set_subnet(self, handle: int, server_ip: str, lease_time: int, options: bytes) -> None:
        if lib.dhcp_subnet_set(self._e, handle, _ip(server_ip), lease_time, options, len(options)) != 0:
            raise EngineError(f"subnet profile {handle}: options rejected ({len(options)} bytes)")

    def del_subnet(self, handle: int) -> None:
        lib.dhcp_subnet_del(self._e, handle)

    def set_lease(self, net_id: int, mac: str, ip: str, handle: int, hostname: str = "") -> None:
        name = hostname.encode()[:255]
        if lib.dhcp_lease_set(self._e, net_id, _mac(mac), _ip(ip), handle, name) != 0:
            raise EngineError(f"lease {net_id}/{mac}: rejected")

    def del_lease(self, net_id: int, mac: str) -> None:
        lib.dhcp_lease_del(self._e, net_id, _mac(mac))

    def set_port(self, ofport: int, net_id: int, macs: list[str]) -> None:
        raw = b"".join(_mac(m) for m in macs)
        if lib.dhcp_port_set(self._e, ofport, net_id, raw, len(macs)) != 0:
            raise EngineError(f"port {ofport}: rejected ({len(macs)} MACs)")

    def set_direct(self, ofport: int, ifindex: int, src_mac: str) -> None:
        """Replies to a declared port leave from interface ``ifindex`` (0: back through OVS)."""
        if lib.dhcp_port_direct(self._e, ofport, ifindex, _mac(src_mac)) != 0:
            raise EngineError(f"port {ofport}: direct replies via ifindex {ifindex} rejected")

    def del_port(self, ofport: int) -> None:
        lib.dhcp_port_del(self._e, ofport)

    def set_rate_limit(self, rate: int, burst: int) -> None:
        lib.dhcp_set_rate_limit(self._e, rate, burst)

    # ------------------------------------------------------------------ packets and counters
    def handle(self, frame: bytes, now_ns: int | None = None) -> bytes:
        """Answer one tagged frame (tests, fuzz replay); b"" when there is no reply."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        n = lib.dhcp_handle_frame(self._e, frame, len(frame), self._out, FRAME_MAX, now, ffi.NULL)
        return bytes(ffi.buffer(self._out, n))

    def counters(self) -> dict[str, int]:
        out = ffi.new("uint64_t[]", len(self._names))
        lib.dhcp_counters(self._e, out, len(self._names))
        return dict(zip(self._names, out, strict=True))

    def sizes(self) -> dict[str, int]:
        leases, ports, subnets = ffi.new("uint64_t *"), ffi.new("uint64_t *"), ffi.new("uint64_t *")
        lib.dhcp_sizes(self._e, leases, ports, subnets)
        return {"leases": leases[0], "ports": ports[0], "subnets": subnets[0]}

    def start_io(self, ifname: str) -> None:
        """Serve ``ifname`` from a C thread (AF_PACKET, batched); raises OSError on failure."""
        rc = lib.dhcp_io_start(self._e, ifname.encode())
        if rc != 0:
            raise OSError(-rc, f"DHCP responder on {ifname}: {os.strerror(-rc)}")

    def stop_io(self) -> None:
        lib.dhcp_io_stop(self._e)

    def io_status(self) -> tuple[int, int]:
        """(1 running, 0 not started or stopped, -errno: the I/O thread ended by itself; its
        wake-up count)."""
        loops = ffi.new("uint64_t *")
        return lib.dhcp_io_status(self._e, loops), loops[0]
