"""One compute host's dataplane: the OVSDB owner, the OpenFlow connection, and the flow driver.

Dataplane events are handed to the core's worker thread (``core.call``), never handled here,
so the core stays the single owner of desired state, planner and installed-flow mirror.
"""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from agent.config import OvsSettings
from agent.core import AgentCore
from agent.dataplane import netlink
from agent.dataplane.openflow import codec
from agent.dataplane.openflow.codec import DecodedFlow, RawFlow, encode_instructions
from agent.dataplane.openflow.connection import Bundle, OpenFlowConnection, OpenFlowError, State
from agent.dataplane.ovsdb import InterfaceInfo, Ovsdb
from agent.planner import cookies
from agent.planner.flows import OFPP_TABLE, Flow, FlowKey, Output
from agent.planner.plan import Interface
from agent.reconciler.flows import BundleRejected

if TYPE_CHECKING:
    from agent.dhcp.driver import DhcpDriver
    from agent.routing.driver import RouteDriver

log = logging.getLogger("aca.dataplane")


_ROUTE_CACHE = int(cookies.Kind.ROUTE_CACHE)


def _reconciled(cookie: int) -> bool:
    """Not an on-demand route cache flow (the dump asked for this agent's tag already)."""
    return (cookie >> cookies.KIND_SHIFT) & 0xFF != _ROUTE_CACHE


class DumpedFlows:
    """The reconciled flows of one dump. A desired flow is found by the bytes OVS sends (its
    match's TLVs in OVS's order), so an unchanged switch is compared with ~100k byte-keyed
    lookups and nothing decoded; the first flow not found that way has the whole dump decoded
    and is looked up by key (a missing flow, or a match OVS orders otherwise)."""

    def __init__(self, parts: list[bytes]) -> None:
        self._parts = parts
        self._raw = codec.raw_flow_stats(parts, _reconciled)
        self._decoded: dict[FlowKey, DecodedFlow] | None = None

    def __len__(self) -> int:
        return len(self._raw)

    def find(self, flow: Flow) -> RawFlow | DecodedFlow | None:
        if not self._raw:  # a restarted ovs-vswitchd: every flow goes in, nothing to encode
            return None
        held = self._raw.get((flow.table, flow.priority, codec.ovs_match_tlvs(flow.match)))
        return held if held is not None else self.by_key().get(flow.key)

    def by_key(self) -> dict[FlowKey, DecodedFlow]:
        if self._decoded is None:
            flows = (f for part in self._parts for f in codec.decode_flow_stats_reply(part))
            self._decoded = {f.key: f for f in flows if _reconciled(f.cookie)}
        return self._decoded


class OpenFlowDriver:
    """The reconciler's FlowDriver over one bridge's OpenFlow connection."""

    def __init__(self, conn: OpenFlowConnection, timeout: float = 20.0) -> None:
        self.conn = conn
        self.timeout = timeout  # per bundle and per dump: past it, the outcome is unknown

    @contextlib.contextmanager
    def bundle(self) -> Iterator[Bundle]:
        try:
            with self.conn.bundle(self.timeout) as bundle:
                yield bundle
        except OpenFlowError as exc:
            raise BundleRejected(str(exc)) from exc

    def apply_bundle(self, deletes: list[Flow], adds: list[Flow]) -> None:
        with self.bundle() as bundle:
            bundle.delete(deletes)
            bundle.add(adds)
            bundle.commit()

    def dump(self) -> dict[FlowKey, DecodedFlow]:
        """Only this agent's flows (by cookie tag); anything else on the bridge is left alone, and
        so are its on-demand route cache flows (they live outside the desired state)."""
        with self.dumping() as dumped:
            return dict(dumped().by_key())

    @contextlib.contextmanager
    def dumping(self) -> Iterator[Callable[[], DumpedFlows]]:
        ours = cookies.LAYOUT_TAG << cookies.TAG_SHIFT
        with self.conn.dumping_flows(ours, cookies.AGENT_MASK, self.timeout) as parts:
            yield lambda: DumpedFlows(parts())

    def delete_flows(self, cookie: int, cookie_mask: int) -> None:
        self.conn.delete_flows(cookie, cookie_mask)

    def packet_out(self, in_port: int, frame: bytes) -> None:
        """``frame`` through the flow tables from table 0 as if it came in on ``in_port``."""
        self.conn.send_packet_out(in_port, (Output(OFPP_TABLE),), frame)

    def same(self, flow: Flow, installed: Any) -> bool:
        return (
            flow.cookie == installed.cookie
            and flow.idle_timeout == installed.idle_timeout
            and flow.hard_timeout == installed.hard_timeout
            and encode_instructions(flow) == installed.instructions
        )


def _interfaces(infos: list[InterfaceInfo]) -> list[Interface]:
    return [(i.name, i.iface_id, i.ofport, i.ifindex) for i in infos if i.ofport and i.ofport > 0]


class HostDataplane:
    def __init__(
        self,
        settings: OvsSettings,
        underlay_ip: str,
        dhcp: DhcpDriver | None = None,
        dhcp_port: str = "",
        routes: RouteDriver | None = None,
        route_port: str = "",
    ) -> None:
        self.settings = settings
        self.underlay_ip = underlay_ip
        self.dhcp = dhcp
        self.dhcp_port = dhcp_port
        self.routes = routes
        self.route_port = route_port
        self.core: AgentCore | None = None
        self.ovsdb = Ovsdb(settings.db, self._on_interfaces, integration_bridge=settings.bridge)
        self.conn = OpenFlowConnection(
            str(pathlib.Path(settings.rundir) / f"{settings.bridge}.mgmt"),
            on_state_change=self._on_openflow_state,
        )
        self.flows = OpenFlowDriver(self.conn, settings.openflow_timeout)
        self._datapath_id: int | None = None
        self._reconnected = False  # ovs-vswitchd came back: the next recovery is a full replay

    def start(self, core: AgentCore, timeout: float = 30.0) -> None:
        """Bridge and tunnel port in place, OpenFlow up, then one resync from desired state."""
        self.core = core
        core.call(core.defer_to_resync).result(timeout)  # the resync at the end programs it all
        self.ovsdb.start(timeout)
        self.ovsdb.ensure_integration_bridge(
            self.settings.bridge, self.settings.datapath_type, timeout=timeout
        )
        tunnel_ofport = None
        if self.underlay_ip:
            if not netlink.underlay_address_present(self.underlay_ip):
                log.warning(
                    'event=underlay_ip_missing ip=%s hint="tunnels will not carry traffic"', self.underlay_ip
                )
            tunnel_ofport = self.ovsdb.ensure_vxlan_port(
                self.settings.bridge, self.underlay_ip, name=self.settings.tunnel_port, timeout=timeout
            )
        else:
            log.warning('event=no_underlay_ip hint="no VXLAN port: neighbours cannot be reached"')
        core.call(lambda: core.set_tunnel(tunnel_ofport)).result(timeout)
        if self.dhcp is not None:
            dhcp_ofport = self._start_dhcp(timeout)
            core.call(lambda: core.set_dhcp_port(dhcp_ofport)).result(timeout)
        if self.routes is not None:
            route_ofport = self._start_routes(timeout)
            core.call(lambda: core.set_route_port(route_ofport)).result(timeout)
        interfaces = _interfaces(self.ovsdb.interfaces(self.settings.bridge))
        core.call(lambda: core.set_interfaces(interfaces)).result(timeout)
        self.conn.connect(timeout)
        self._datapath_id = self.conn.datapath_id
        core.recover = self._recover
        # Never fails: a resync that does not go through is retried by the core with backoff
        # (the agent runs, answers PENDING and shows `dataplane_ready: false` meanwhile).
        core.call(core.repair_now).result(timeout * 4)

    def _internal_port(self, name: str, timeout: float) -> int:
        """An agent-owned internal port on the bridge, up; returns its ofport."""
        ofport = self.ovsdb.ensure_internal_port(self.settings.bridge, name, timeout)
        # No addresses, no IPv6 chatter: the port only carries frames to and from a C engine.
        with contextlib.suppress(OSError):
            pathlib.Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
        netlink.set_link(name, up=True)
        return ofport

    def _start_dhcp(self, timeout: float) -> int:
        """The responder's internal port on the bridge, up, served by the engine's C thread."""
        assert self.dhcp is not None
        ofport = self._internal_port(self.dhcp_port, timeout)
        self.dhcp.start(self.dhcp_port)
        log.info("event=dhcp_port port=%s ofport=%d", self.dhcp_port, ofport)
        return ofport

    def _start_routes(self, timeout: float) -> int:
        """The route fast path's internal port, served by the route engine's C thread."""
        assert self.routes is not None
        ofport = self._internal_port(self.route_port, timeout)
        self.routes.start(self.route_port)
        log.info("event=route_port port=%s ofport=%d", self.route_port, ofport)
        return ofport

    def stop(self) -> None:
        if self.routes is not None:
            self.routes.stop()
        if self.dhcp is not None:
            self.dhcp.stop()
        self.conn.close()
        self.ovsdb.stop()

    # ------------------------------------------------------------------ events (other threads)
    def _on_interfaces(self, infos: list[InterfaceInfo]) -> None:
        core = self.core
        if core is not None:
            interfaces = _interfaces(infos)
            core.call(lambda: core.set_interfaces(interfaces))

    def _on_openflow_state(self, state: State) -> None:
        core = self.core
        if core is None:
            return
        if state is State.DISCONNECTED:
            core.call(core.dataplane_lost)
        elif state is State.CONNECTED and self._datapath_id is not None:  # a reconnect
            self._reconnected = True
            core.counters["openflow_reconnects"] += 1  # (only this thread writes this key)
            core.call(core.repair_now)

    def _recover(self) -> None:
        """The core's recovery (worker thread): a full replay after a reconnect, else a resync
        (a bundle whose outcome is unknown). Raises while the switch is unreachable; the core
        retries with backoff."""
        assert self.core is not None
        if self._reconnected:
            self._replay()
            self._reconnected = False
        else:
            self.core.resync()

    def _replay(self) -> None:
        """ovs-vswitchd came back (a restart empties its tables): replay from memory while holding
        flow-restore-wait, so it forwards nothing until the table is whole again."""
        assert self.core is not None
        new_dpid = self.conn.datapath_id
        log.warning("event=openflow_reconnected old_dpid=%s new_dpid=%s", self._datapath_id, new_dpid)
        self._datapath_id = new_dpid
        try:
            self.ovsdb.set_flow_restore_wait(True)
            if self.dhcp is not None:
                # ovs-vswitchd may have recreated the responder's device: bind the C thread anew
                # (and take its ofport again) before the flows that steer DHCP to it come back.
                self.dhcp.stop()
                self.core.set_dhcp_port(self._start_dhcp(10.0))
            if self.routes is not None:
                self.routes.stop()
                self.core.set_route_port(self._start_routes(10.0))
            self.core.resync()
        finally:
            self.ovsdb.set_flow_restore_wait(False)
