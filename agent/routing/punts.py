"""The punt consumer: what the agent does with routed packets the C engine could not route.

One thread drains the engine's events. A punted packet's destination is unknown: the first one
for a (router, destination) sends the controller one RequestGoalStates(ON_DEMAND) (from a small
pool, so a slow controller never stalls the thread), and the packets wait in a bounded hold.
They are forwarded through the engine (the same C rewrite) once the controller said SUCCESS and
the pushed destination is in the engine, and dropped on FAILURE or after ``hold_seconds``.
A hit (the engine forwarded to a known destination) goes to ``on_hit``.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from agent.routing.engine import Hit, Punt, RouteEngine, Verdict, punted_fields

log = logging.getLogger("aca.routing")
THREAD_NAME = "aca-route-punts"

Key = tuple[int, str]
# (tunnel id, source IP, source port, destination IP, destination port, IP protocol) → routable
Ask = Callable[[int, str, int, str, int, int], bool]


@dataclass(frozen=True, slots=True)
class FiveTuple:
    src_ip: str
    dst_ip: str
    proto: int
    src_port: int
    dst_port: int


def five_tuple(frame: bytes) -> FiveTuple | None:
    """The IPv4 5-tuple of an Ethernet frame (ports 0 unless an unfragmented TCP/UDP packet)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
        return None
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    src = str(ipaddress.IPv4Address(frame[26:30]))
    dst = str(ipaddress.IPv4Address(frame[30:34]))
    sport = dport = 0
    first_fragment = int.from_bytes(frame[20:22], "big") & 0x1FFF == 0
    if proto in (6, 17) and first_fragment and len(frame) >= 14 + ihl + 4:
        sport = int.from_bytes(frame[14 + ihl : 16 + ihl], "big")
        dport = int.from_bytes(frame[16 + ihl : 18 + ihl], "big")
    return FiveTuple(src, dst, proto, sport, dport)


@dataclass
class _Pending:
    frames: list[bytes]
    deadline: float
    routable: bool = False
    answered: bool = False


class PuntConsumer:
    def __init__(
        self,
        engine: RouteEngine,
        knows: Callable[[int, str], bool],
        ask: Ask | None,
        on_hit: Callable[[int, str], None] | None = None,
        release: Callable[[bytes], Verdict] | None = None,
        hold: int = 256,
        hold_seconds: float = 10.0,
    ) -> None:
        self.engine = engine
        self.knows = knows
        self.ask = ask
        self.on_hit = on_hit
        self.release = release or engine.inject  # how a held frame is forwarded once routable
        self.hold = hold
        self.hold_seconds = hold_seconds
        self.counters: Counter[str] = Counter()
        self._pending: dict[Key, _Pending] = {}
        self._held = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="aca-on-demand")
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self.last_loop = time.monotonic()  # heartbeat: the loop goes round at least every 0.2 s

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.engine.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            self.last_loop = time.monotonic()
            with self._lock:
                waiting = bool(self._pending)  # an answer may come any moment: look often
            try:
                event = self.engine.next_event(0.005 if waiting else 0.2)
            except EOFError:
                return
            try:
                if isinstance(event, Punt):
                    self._punt(event.frame)
                elif isinstance(event, Hit) and self.on_hit is not None:
                    self.on_hit(event.tag, event.ip)
                self.service()
            except Exception:  # one bad packet must not end the thread
                log.exception("event=route_punt_failed")

    def _punt(self, frame: bytes) -> None:
        fields, tup = punted_fields(frame), five_tuple(frame)
        if fields is None or tup is None:
            self.counters["dropped_malformed"] += 1
            return
        tag, vni = fields
        key = (tag, tup.dst_ip)
        with self._lock:
            if self._held >= self.hold:
                self.counters["dropped_hold_full"] += 1
                return
            pending = self._pending.get(key)
            new = pending is None
            if new:
                pending = self._pending[key] = _Pending([], time.monotonic() + self.hold_seconds)
            pending.frames.append(frame)
            self._held += 1
            self.counters["held"] += 1
        if new and self.knows(tag, tup.dst_ip):
            pending.answered = pending.routable = True  # became known meanwhile: just forward
        elif new and self.ask is None:
            pending.answered = True  # no controller to ask: wait for a push until the deadline
            pending.routable = True
        elif new:
            self.counters["requests"] += 1
            assert self.ask is not None
            ask = self.ask
            self._pool.submit(self._request, ask, key, vni, tup)

    def _request(self, ask: Ask, key: Key, vni: int, tup: FiveTuple) -> None:
        routable = ask(vni, tup.src_ip, tup.src_port, tup.dst_ip, tup.dst_port, tup.proto)
        with self._lock:
            self.counters["replies_success" if routable else "replies_failure"] += 1
            pending = self._pending.get(key)
            if pending is None:
                return
            if not routable:
                del self._pending[key]
                self._held -= len(pending.frames)
                self.counters["dropped_failure"] += len(pending.frames)
                return
            pending.answered = pending.routable = True

    def service(self) -> None:
        """Forward what became routable, drop what waited too long (also called by tests)."""
        now = time.monotonic()
        release: list[tuple[Key, list[bytes]]] = []
        with self._lock:
            for key, p in list(self._pending.items()):
                if p.answered and p.routable and self.knows(*key):
                    release.append((key, p.frames))
                elif now >= p.deadline:
                    self.counters["dropped_timeout"] += len(p.frames)
                else:
                    continue
                del self._pending[key]
                self._held -= len(p.frames)
        for key, frames in release:
            log.info("event=on_demand_forward ip=%s packets=%d", key[1], len(frames))
            for frame in frames:
                try:
                    verdict = self.release(frame)
                except OSError as exc:
                    self.counters["dropped_send"] += 1
                    log.warning("event=on_demand_inject_failed ip=%s error=%s", key[1], str(exc))
                    continue
                self.counters["forwarded" if verdict is Verdict.FORWARD else "dropped_engine"] += 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counters, "pending": len(self._pending), "holding": self._held}
