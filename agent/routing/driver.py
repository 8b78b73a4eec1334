"""Keeps the C route engine equal to desired state, for the owners a change touched.

Runs on the core's worker thread inside the goal state's programming step (like the DHCP
driver): routers (tag → DVR MAC), segments (VNI → 802.1Q index) and destinations (the host
routes ``Planner.route_targets`` gives for each port and neighbour), mirrored here so the
engine only gets differences. In ``on_demand`` mode it also owns the cache flows: a hit
installs one, a change to its neighbour deletes them by cookie.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from agent.model.resources import ResourceType
from agent.planner import cookies, routing
from agent.planner.cookies import Kind
from agent.planner.flows import Flow
from agent.planner.plan import ON_DEMAND, Owner, Planner
from agent.planner.routing import RouteTarget
from agent.routing.engine import RouteEngine, Verdict

log = logging.getLogger("aca.routing")

Key = tuple[int, str]  # (router tag, destination IP)
NO_MAC = "00:00:00:00:00:00"


class CacheFlows(Protocol):
    """Where cache flows go (the bridge's OpenFlow connection, or a recorder in tests)."""

    def apply_bundle(self, deletes: list[Flow], adds: list[Flow]) -> None: ...

    def delete_flows(self, cookie: int, cookie_mask: int) -> None: ...

    def packet_out(self, in_port: int, frame: bytes) -> None: ...


def cache_cookie(nb_id: str) -> int:
    return cookies.cookie(Kind.ROUTE_CACHE, nb_id)


class RouteDriver:
    def __init__(
        self,
        planner: Planner,
        engine: RouteEngine,
        idle_timeout: int = 10,
        cache: CacheFlows | None = None,
    ) -> None:
        self.planner = planner
        self.engine = engine
        self.idle_timeout = idle_timeout
        self.cache = cache
        self.interface: str | None = None
        self._routers: dict[str, tuple[int, str]] = {}  # router id → (tag, DVR MAC)
        self._segments: dict[int, int] = {}  # VNI → 802.1Q index
        self._dests: dict[Owner, dict[Key, RouteTarget]] = {}  # port/neighbour → its host routes
        self._claims: dict[Key, tuple[Owner, RouteTarget]] = {}  # who holds each engine entry
        self._lock = threading.Lock()  # _claims is also read by the punt consumer's thread
        self.cache_installs = 0
        self.punts: Any = None  # the punt consumer, for its counters

    @property
    def on_demand(self) -> bool:
        return self.planner.routing_mode == ON_DEMAND

    # ------------------------------------------------------------------ I/O
    def start(self, ifname: str) -> None:
        self.engine.start_io(ifname)
        self.interface = ifname
        log.info("event=route_fast_path_started interface=%s mode=%s", ifname, self.planner.routing_mode)

    def stop(self) -> None:
        self.engine.stop_io()
        self.interface = None

    # ------------------------------------------------------------------ changes (worker thread)
    def apply(
        self, owners: Iterable[Owner], dataplane_ready: bool = True, failures: dict[Owner, str] | None = None
    ) -> int:
        """Bring the touched owners' engine entries up to date; returns how many changed.
        An owner whose entries cannot be set fails alone (recorded in ``failures``)."""
        changed = 0
        for owner in owners:
            kind, oid = owner
            try:
                if kind is Kind.ROUTER:
                    changed += self._apply_router(oid)
                elif kind is Kind.ROUTE:
                    changed += self._apply_segment(int(oid))
                elif kind is Kind.NEIGHBOR or kind is Kind.PORT:
                    n = self._apply_dests(owner)
                    if n and kind is Kind.NEIGHBOR and self.on_demand and dataplane_ready:
                        self._drop_cache(oid)
                    changed += n
            except Exception as exc:
                log.error("event=route_entry_failed owner=%s:%s error=%r", kind.name, oid, exc)
                if failures is not None:
                    failures[owner] = f"route entry failed: {exc!r}"
        return changed

    def _apply_router(self, router_id: str) -> int:
        router = self.state_router(router_id)
        want = (routing.router_tag(router_id), getattr(router, "dvr_mac", "") or NO_MAC) if router else None
        held = self._routers.get(router_id)
        if want == held:
            return 0
        if held is not None and (want is None or held[0] != want[0]):
            self.engine.del_router(held[0])
        if want is None:
            del self._routers[router_id]
        else:
            self.engine.set_router(*want)
            self._routers[router_id] = want
        return 1

    def state_router(self, router_id: str) -> Any:
        return self.planner.state.resources[ResourceType.ROUTER].get(router_id)

    def _apply_segment(self, vni: int) -> int:
        want = self.planner.route_vlans.get(vni)
        if want == self._segments.get(vni):
            return 0
        if want is None:
            self.engine.del_segment(vni)
            del self._segments[vni]
        else:
            self.engine.set_segment(vni, want)
            self._segments[vni] = want
        return 1

    def _apply_dests(self, owner: Owner) -> int:
        targets = self.planner.route_targets(owner)
        held = self._dests.get(owner)
        if held is None and not targets:
            return 0  # the common case at scale: a neighbour no router of this host serves
        held = held or {}
        want = {(t.tag, t.ip): t for t in targets}
        if want == held:
            return 0
        for key in held.keys() - want.keys():
            claim = self._claims.get(key)
            if claim is not None and claim[0] == owner:
                self.engine.del_dest(*key)
                with self._lock:
                    del self._claims[key]
        for key, t in want.items():
            if held.get(key) != t or self._claims.get(key, (None,))[0] != owner:
                self.engine.set_dest(t.tag, t.ip, t.dst_mac, t.src_mac, t.vni)
                with self._lock:
                    self._claims[key] = (owner, t)
        if want:
            self._dests[owner] = want
        else:
            self._dests.pop(owner, None)
        return 1

    def _drop_cache(self, nb_id: str) -> None:
        if self.cache is None:
            return
        try:
            self.cache.delete_flows(cache_cookie(nb_id), cookies.OWNER_MASK)
        except (ConnectionError, TimeoutError) as exc:
            log.warning("event=route_cache_delete_failed neighbour=%s error=%s", nb_id, str(exc))

    # ------------------------------------------------------------------ hits (worker thread)
    def cache_hit(self, tag: int, ip: str) -> Flow | None:
        """The fast path forwarded to (tag, ip): in on_demand mode install its cache flow, unless
        ``idle_timeout`` is 0 (no caching: every packet to a neighbour takes the C path)."""
        claim = self._claims.get((tag, ip))
        if not self.on_demand or not self.idle_timeout or claim is None or self.cache is None:
            return None
        (kind, oid), target = claim
        if kind is not Kind.NEIGHBOR:
            return None  # local ports keep their proactive routes
        flow = routing.cache_flow(target, cache_cookie(oid), self.idle_timeout)
        try:
            self.cache.apply_bundle([], [flow])
        except Exception as exc:  # a refused or lost flow only costs another trip through C
            log.warning("event=route_cache_install_failed ip=%s error=%s", ip, str(exc))
            return None
        self.cache_installs += 1
        return flow

    # ------------------------------------------------------------------ punt thread
    def release(self, frame: bytes) -> Verdict:
        """Forward a held frame now that its destination is programmed: the C rewrite, then a
        packet-out into table 0 as if from the route port. OVS runs a packet-out through its
        flow tables as they are now; sent back on the route port instead, the frame meets the
        datapath's cached flow for its destination, which lags a flow change by a few ms (a
        neighbour deleted and pushed again lost the released packet in a third of the trials)."""
        ofport = self.planner.route_ofport
        if self.cache is None or ofport is None:
            return self.engine.inject(frame)
        verdict, out = self.engine.rewrite(frame)
        if verdict is Verdict.FORWARD:
            self.cache.packet_out(ofport, out)
        return verdict

    # ------------------------------------------------------------------ any thread
    def knows(self, tag: int, ip: str) -> bool:
        with self._lock:
            return (tag, ip) in self._claims

    def stats(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            "mode": self.planner.routing_mode,
            **self.engine.sizes(),
            "cache_installs": self.cache_installs,
            "counters": self.engine.counters(),
            "punts": self.punts.stats() if self.punts is not None else None,
        }
