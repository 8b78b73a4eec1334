"""Keeps the C responder equal to desired state, for the owners a change touched.

Runs on the core's worker thread inside the goal state's programming step, so a lease is in
the responder before the reply says SUCCESS. It mirrors what it installed (leases by DHCP id,
ports by port id, subnet profiles by subnet id) and sends the engine only differences.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any, NamedTuple

from agent.dhcp import leases
from agent.dhcp.engine import Engine
from agent.dhcp.leases import Lease, Profile, Settings
from agent.model.resources import Dhcp, ResourceType
from agent.model.state import DesiredState
from agent.planner import dhcp as plan
from agent.planner.cookies import Kind

log = logging.getLogger("aca.dhcp")


class _PortEntry(NamedTuple):
    ofport: int
    vni: int
    macs: tuple[str, ...]
    ifindex: int  # replies leave from this device directly (0: back through OVS)
    source: str  # their Ethernet source


class DhcpDriver:
    def __init__(
        self, state: DesiredState, settings: Settings, engine: Engine | None = None, direct: bool = True
    ) -> None:
        self.state = state
        self.settings = settings
        self.engine = engine or Engine()
        self.direct = direct  # replies straight out of the VM's device; False: back through OVS
        self._leases: dict[str, Lease] = {}  # DHCP id → lease in the engine
        self._ports: dict[str, _PortEntry] = {}  # port id → what the engine holds for it
        self._profiles: dict[str, tuple[int, Profile]] = {}  # subnet id → (handle, profile)
        self._users: Counter[str] = Counter()  # subnet id → leases using its profile
        self._handles = itertools.count(1)
        self.interface: str | None = None

    # ------------------------------------------------------------------ I/O
    def start(self, ifname: str) -> None:
        self.engine.start_io(ifname)
        self.interface = ifname
        log.info("event=dhcp_responder_started interface=%s", ifname)

    def stop(self) -> None:
        self.engine.stop_io()
        self.interface = None

    # ------------------------------------------------------------------ changes (worker thread)
    def apply(
        self,
        owners: Iterable[tuple[Kind, str]],
        bindings: dict[str, int],
        dhcp_ofport: int | None,
        ifindexes: dict[str, int],
        failures: dict[tuple[Kind, str], str] | None = None,
    ) -> int:
        """Bring the touched DHCP owners' engine entries up to date; returns how many changed.
        An owner whose entry cannot be built fails alone (recorded in ``failures``)."""
        changed = 0
        fresh: dict[str, Profile] = {}
        for kind, oid in owners:
            if kind is not Kind.DHCP:
                continue
            try:
                if oid.startswith(plan.LEASE_PREFIX):
                    changed += self._apply_lease(oid[len(plan.LEASE_PREFIX) :], fresh)
                elif oid.startswith(plan.PORT_PREFIX):
                    port_id = oid[len(plan.PORT_PREFIX) :]
                    ifindex = ifindexes.get(port_id, 0) if self.direct else 0
                    changed += self._apply_port(port_id, bindings, dhcp_ofport, ifindex)
            except Exception as exc:
                log.error("event=dhcp_entry_failed owner=%s error=%r", oid, exc)
                if failures is not None:
                    failures[(kind, oid)] = f"dhcp entry failed: {exc!r}"
        return changed

    def _profile_handle(self, subnet_id: str, fresh: dict[str, Profile]) -> int:
        """The engine handle of the subnet's profile, (re)installed if it changed."""
        prof = fresh.get(subnet_id)
        if prof is None:
            prof = fresh[subnet_id] = leases.profile(self.state, self.state.subnets[subnet_id], self.settings)
        held = self._profiles.get(subnet_id)
        if held is not None and held[1] == prof:
            return held[0]
        handle = held[0] if held is not None else next(self._handles)
        self.engine.set_subnet(handle, prof.server_ip, prof.lease_time, prof.options)
        self._profiles[subnet_id] = (handle, prof)
        return handle

    def _release_profile(self, subnet_id: str) -> None:
        self._users[subnet_id] -= 1
        if self._users[subnet_id] <= 0:
            del self._users[subnet_id]
            held = self._profiles.pop(subnet_id, None)
            if held is not None:
                self.engine.del_subnet(held[0])

    def _apply_lease(self, dhcp_id: str, fresh: dict[str, Profile]) -> int:
        entry = self.state.resources[ResourceType.DHCP].get(dhcp_id)
        want = leases.lease(self.state, entry) if isinstance(entry, Dhcp) else None
        held = self._leases.get(dhcp_id)
        handle = 0
        if want is not None:
            handle = self._profile_handle(want.subnet_id, fresh)  # a subnet change re-sends it
        if want == held:
            return 0
        if held is not None and (want is None or (held.net_id, held.mac) != (want.net_id, want.mac)):
            self.engine.del_lease(held.net_id, held.mac)
        if want is not None:
            self.engine.set_lease(want.net_id, want.mac, want.ip, handle, want.hostname)
            self._leases[dhcp_id] = want
            self._users[want.subnet_id] += 1
        else:
            del self._leases[dhcp_id]
        if held is not None:
            self._release_profile(held.subnet_id)
        return 1

    def _apply_port(
        self, port_id: str, bindings: dict[str, int], dhcp_ofport: int | None, ifindex: int
    ) -> int:
        found = plan.steered(self.state, port_id, bindings, dhcp_ofport)
        want = None
        if found is not None:
            port, ofport, vni = found
            source = plan.responder_mac(self.state, port)
            want = _PortEntry(ofport, vni, tuple(plan.port_macs(port)), ifindex, source)
        held = self._ports.get(port_id)
        if want == held:
            return 0
        if held is not None and (want is None or held.ofport != want.ofport):
            self.engine.del_port(held.ofport)
        if want is not None:
            self.engine.set_port(want.ofport, want.vni, list(want.macs))
            if want.ifindex:
                self.engine.set_direct(want.ofport, want.ifindex, want.source)
            self._ports[port_id] = want
        else:
            del self._ports[port_id]
        return 1

    # ------------------------------------------------------------------ reading
    def stats(self) -> dict[str, Any]:
        return {
            "interface": self.interface,
            **self.engine.sizes(),
            "counters": self.engine.counters(),
        }

    def leases(self) -> list[dict[str, Any]]:
        return [
            {"id": rid, "network": le.net_id, "mac": le.mac, "ip": le.ip, "subnet": le.subnet_id,
             "hostname": le.hostname}
            for rid, le in sorted(self._leases.items())
        ]  # fmt: skip
