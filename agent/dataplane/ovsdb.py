"""The agent's one connection to the local OVSDB (Open_vSwitch database).

A single ``ovs.db.idl.Idl`` replica lives in its own thread: the IDL is not thread-safe, so
every read and write is a job handed to that thread, and callers block on a future. The IDL
reconnects by itself (its jsonrpc session backs off 1 s, 2 s, ... up to 8 s) and re-monitors
after an ovsdb-server restart; jobs that need a synced replica simply wait for it.

Writes are small idempotent commands (``may_exist``/``if_exists``, only differing values are
written) composed into one transaction. TRY_AGAIN (verify conflict, lost connection) rebuilds
the transaction from the fresh replica. A transaction that changed something also increments
``Open_vSwitch.next_cfg``; the call returns only once ovs-vswitchd has copied it to ``cur_cfg``,
i.e. has applied the change, so a following OpenFlow message finds the bridge and ports.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import ovs.db.idl
import ovs.jsonrpc
import ovs.poller
import ovs.stream

log = logging.getLogger("aca.ovsdb")

DB_NAME = "Open_vSwitch"
_TICK_MS = 1000

# Only what the agent reads or writes is replicated. Columns are not registered as
# ``readonly``: ovs 4.0's IDL then hands out unset integer columns (cur_cfg before
# ovs-vswitchd first writes it) as raw Atoms instead of ints.
_COLUMNS: dict[str, list[str]] = {
    "Open_vSwitch": ["bridges", "other_config", "next_cfg", "cur_cfg"],
    "Bridge": ["name", "ports", "datapath_type", "fail_mode", "protocols", "other_config", "datapath_id"],
    "Port": ["name", "interfaces"],
    "Interface": [
        "name",
        "type",
        "options",
        "external_ids",
        "ofport",
        "mac_in_use",
        "admin_state",
        "link_state",
        "error",
        "ifindex",
    ],
}

_Row = Any  # ovs.db.idl.Row: attribute access per column, no static types


class OvsdbError(Exception):
    """An OVSDB operation failed; ``what`` names the operation, the message says why."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


@dataclass(frozen=True)
class InterfaceInfo:
    """One Interface row as the agent needs it.

    ``ofport`` is None until ovs-vswitchd assigns one (or when it failed: see ``error``).
    ``mac`` is ``external_ids:attached-mac`` (the VM's MAC, set by Nova) or else ``mac_in_use``.
    """

    name: str
    type: str
    ofport: int | None
    iface_id: str | None
    mac: str | None
    admin_up: bool | None
    link_up: bool | None
    error: str | None
    ifindex: int = 0  # the kernel's, when the interface is a Linux device


# ---------------------------------------------------------------------------- commands


class TxnContext:
    """What a command sees: the replica and the open transaction; records whether it wrote."""

    def __init__(self, idl: ovs.db.idl.Idl, txn: ovs.db.idl.Transaction) -> None:
        self.idl = idl
        self.txn = txn
        self.changed = False

    def rows(self, table: str) -> Iterable[_Row]:
        return self.idl.tables[table].rows.values()

    def lookup(self, table: str, name: str) -> _Row | None:
        return next((r for r in self.rows(table) if r.name == name), None)

    def root(self) -> _Row:
        row = next(iter(self.rows("Open_vSwitch")), None)
        if row is None:
            raise OvsdbError("Open_vSwitch", "table is empty (database not initialised)")
        return row

    def insert(self, table: str) -> _Row:
        self.changed = True
        return self.txn.insert(self.idl.tables[table])

    def set(self, row: _Row, column: str, value: Any) -> None:
        """Write ``column`` only if it differs, so reruns produce an empty transaction."""
        if getattr(row, column, _MISSING) != value:
            setattr(row, column, value)
            self.changed = True

    def set_keys(self, row: _Row, column: str, values: dict[str, str | None]) -> None:
        """Per-key map mutation (None deletes): other writers' keys are left alone."""
        current = getattr(row, column, {})
        for key, value in values.items():
            if value is None and key in current:
                row.delkey(column, key)
                self.changed = True
            elif value is not None and current.get(key) != value:
                row.setkey(column, key, value)
                self.changed = True

    def add_ref(self, row: _Row, column: str, target: _Row) -> None:
        row.addvalue(column, target)
        self.changed = True


_MISSING = object()


class Command(Protocol):
    """One idempotent change, applied to the replica inside a transaction."""

    def run(self, ctx: TxnContext) -> None: ...


@dataclass(frozen=True)
class AddBridge:
    name: str
    datapath_type: str
    may_exist: bool = True

    def run(self, ctx: TxnContext) -> None:
        br = ctx.lookup("Bridge", self.name)
        if br is None:
            iface = ctx.insert("Interface")
            iface.name = self.name
            iface.type = "internal"
            port = ctx.insert("Port")
            port.name = self.name
            port.interfaces = [iface]
            br = ctx.insert("Bridge")
            br.name = self.name
            br.ports = [port]
            ctx.add_ref(ctx.root(), "bridges", br)
        elif not self.may_exist:
            raise OvsdbError(f"add bridge {self.name}", "bridge exists")
        ctx.set(br, "datapath_type", self.datapath_type)


@dataclass(frozen=True)
class SetColumns:
    """Set plain columns and map keys of one record (``name=None`` is the Open_vSwitch row)."""

    table: str
    name: str | None
    columns: tuple[tuple[str, Any], ...] = ()
    keys: tuple[tuple[str, dict[str, str | None]], ...] = ()
    if_exists: bool = False

    def run(self, ctx: TxnContext) -> None:
        row = ctx.root() if self.name is None else ctx.lookup(self.table, self.name)
        if row is None:
            if self.if_exists:
                return
            raise OvsdbError(f"set {self.table} {self.name}", "no such record")
        for column, value in self.columns:
            ctx.set(row, column, value)
        for column, values in self.keys:
            ctx.set_keys(row, column, values)


@dataclass(frozen=True)
class AddPort:
    """A port with one interface of ``iface_type`` on ``bridge``; an existing one is updated."""

    bridge: str
    name: str
    iface_type: str = ""
    options: tuple[tuple[str, str], ...] = ()
    may_exist: bool = True

    def run(self, ctx: TxnContext) -> None:
        what = f"add port {self.name} to {self.bridge}"
        br = ctx.lookup("Bridge", self.bridge)
        if br is None:
            raise OvsdbError(what, "no such bridge")
        port = ctx.lookup("Port", self.name)
        if port is None:
            iface = ctx.insert("Interface")
            iface.name = self.name
            port = ctx.insert("Port")
            port.name = self.name
            port.interfaces = [iface]
            ctx.add_ref(br, "ports", port)
        elif not self.may_exist:
            raise OvsdbError(what, "port exists")
        elif port not in br.ports:
            raise OvsdbError(what, "port exists on another bridge")
        else:
            iface = next((i for i in port.interfaces if i.name == self.name), None)
            if iface is None:
                raise OvsdbError(what, "existing port has no interface of that name")
        ctx.set(iface, "type", self.iface_type)
        ctx.set_keys(iface, "options", dict(self.options))


# ---------------------------------------------------------------------------- jobs


class _Job:
    """Work for the IDL thread; ``step`` is called after each IDL run until the future is done."""

    def __init__(self, what: str, timeout: float) -> None:
        self.what = what
        self.deadline = time.monotonic() + timeout
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def step(self, idl: ovs.db.idl.Idl) -> None:
        raise NotImplementedError

    def expire(self) -> None:
        self.future.set_exception(OvsdbError(self.what, "timed out"))


class _WaitJob(_Job):
    """Resolves with the first non-None result of ``probe`` on a synced replica."""

    def __init__(self, what: str, timeout: float, probe: Callable[[ovs.db.idl.Idl], Any]) -> None:
        super().__init__(what, timeout)
        self.probe = probe

    def step(self, idl: ovs.db.idl.Idl) -> None:
        if idl.has_ever_connected():
            value = self.probe(idl)
            if value is not None:
                self.future.set_result(value)


class _Stage(enum.Enum):
    BUILD = 1
    COMMIT = 2
    APPLY = 3


class _WriteJob(_Job):
    def __init__(self, what: str, timeout: float, commands: Sequence[Command]) -> None:
        super().__init__(what, timeout)
        self.commands = commands
        self.stage = _Stage.BUILD
        self.txn: ovs.db.idl.Transaction | None = None
        self.retry_after_seqno: int | None = None  # rebuild only once the replica moved on
        self.base_seqno = 0
        self.next_cfg = 0

    def step(self, idl: ovs.db.idl.Idl) -> None:
        if self.stage is _Stage.BUILD:
            if not idl.has_ever_connected() or idl.change_seqno == self.retry_after_seqno:
                return
            self._build(idl)
        if self.stage is _Stage.COMMIT:
            self._commit(idl)
        if self.stage is _Stage.APPLY:
            cur = _root_row(idl)
            if cur is not None and cur.cur_cfg >= self.next_cfg:
                self.future.set_result(None)

    def _build(self, idl: ovs.db.idl.Idl) -> None:
        self.base_seqno = idl.change_seqno
        txn = ovs.db.idl.Transaction(idl)
        ctx = TxnContext(idl, txn)
        try:
            for command in self.commands:
                command.run(ctx)
            if ctx.changed:
                txn.add_comment(f"aca-agent: {self.what}")
                ctx.root().increment("next_cfg")
        except BaseException:
            txn.abort()
            raise
        self.txn, self.stage = txn, _Stage.COMMIT

    def _commit(self, idl: ovs.db.idl.Idl) -> None:
        assert self.txn is not None
        status = self.txn.commit()
        T = ovs.db.idl.Transaction
        if status == T.INCOMPLETE:
            return
        if status == T.UNCHANGED:
            self.future.set_result(None)
        elif status == T.SUCCESS:
            self.next_cfg = self.txn.get_increment_new_value()
            self.stage = _Stage.APPLY
        elif status == T.TRY_AGAIN:
            log.debug("event=ovsdb_transaction_retry what=%s", self.what)
            self.retry_after_seqno = self.base_seqno
            self.stage = _Stage.BUILD
        else:
            error = self.txn.get_error() or T.status_to_string(status)
            raise OvsdbError(self.what, f"transaction failed: {error}")

    def expire(self) -> None:
        if self.stage is _Stage.APPLY:
            reason = f"ovs-vswitchd did not apply next_cfg={self.next_cfg} in time"
            self.future.set_exception(OvsdbError(self.what, reason))
            return
        if self.txn is not None and self.stage is _Stage.COMMIT:
            self.txn.abort()  # may still commit server-side; the commands are idempotent
        super().expire()


def _root_row(idl: ovs.db.idl.Idl) -> _Row | None:
    return next(iter(idl.tables["Open_vSwitch"].rows.values()), None)


def _first(value: list[Any]) -> Any:
    return value[0] if value else None


def _bridge_interfaces(idl: ovs.db.idl.Idl, bridge: str) -> list[InterfaceInfo] | None:
    br = next((r for r in idl.tables["Bridge"].rows.values() if r.name == bridge), None)
    if br is None:
        return None
    infos = []
    for port in br.ports:
        for iface in port.interfaces:
            ofport = _first(iface.ofport)
            ids = iface.external_ids
            admin, link = _first(iface.admin_state), _first(iface.link_state)
            infos.append(
                InterfaceInfo(
                    name=iface.name,
                    type=iface.type,
                    ofport=ofport if ofport is not None and ofport > 0 else None,
                    iface_id=ids.get("iface-id"),
                    mac=ids.get("attached-mac") or _first(iface.mac_in_use),
                    admin_up=None if admin is None else admin == "up",
                    link_up=None if link is None else link == "up",
                    error=_first(iface.error),
                    ifindex=_first(iface.ifindex) or 0,
                )
            )
    return sorted(infos, key=lambda i: i.name)


def fetch_schema(remote: str, timeout: float) -> ovs.db.idl.SchemaHelper:
    """Ask the server for its schema (so columns match the running OVS, not a file on disk)."""
    deadline = time.monotonic() + timeout
    while True:
        error, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote), timeout=1000)
        if not error:
            break
        if time.monotonic() > deadline:
            raise OvsdbError(f"connect {remote}", os.strerror(error))
        time.sleep(0.1)
    rpc = ovs.jsonrpc.Connection(stream)
    try:
        error, reply = rpc.transact_block(ovs.jsonrpc.Message.create_request("get_schema", [DB_NAME]))
    finally:
        rpc.close()
    if error:
        raise OvsdbError(f"get_schema {remote}", os.strerror(error))
    if reply.error:
        raise OvsdbError(f"get_schema {remote}", str(reply.error))
    helper = ovs.db.idl.SchemaHelper(schema_json=reply.result)
    for table, columns in _COLUMNS.items():
        helper.register_columns(table, columns)
    return helper


# ---------------------------------------------------------------------------- the owner


class Ovsdb:
    """The IDL thread plus blocking, thread-safe calls into it.

    ``on_interface_change`` runs in the IDL thread with the full sorted interface list of the
    integration bridge, once after the first sync and then whenever that list changes (ports
    added/removed, ofport, iface-id, MAC or state changed). It must not make blocking write
    calls on this object (they would wait on the thread that runs them); reads are fine.
    """

    def __init__(
        self,
        remote: str,
        on_interface_change: Callable[[list[InterfaceInfo]], None] | None = None,
        integration_bridge: str = "br-int",
    ) -> None:
        self.remote = remote
        self._on_interface_change = on_interface_change
        self._int_bridge = integration_bridge
        self._idl: ovs.db.idl.Idl | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._incoming: list[_Job] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopping = False
        self._reported: tuple[str, list[InterfaceInfo]] | None = None
        self.last_loop = time.monotonic()  # the IDL loop's heartbeat (it wakes at least every tick)

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> None:
        """Connect and return once the replica holds a full copy of the database."""
        helper = fetch_schema(self.remote, timeout)
        self._idl = ovs.db.idl.Idl(self.remote, helper)
        self._thread = threading.Thread(target=self._loop, name="ovsdb-idl", daemon=True)
        self._thread.start()
        self._wait(f"initial sync with {self.remote}", timeout, lambda _idl: True)

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._idl is not None:
            self._idl.close()
            self._idl = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------ public API
    def execute(self, what: str, commands: Sequence[Command], timeout: float = 10.0) -> None:
        """Run ``commands`` in one transaction and wait for ovs-vswitchd to apply it."""
        if threading.current_thread() is self._thread:
            raise OvsdbError(what, "blocking write from the IDL thread would deadlock")
        self._submit(_WriteJob(what, timeout, commands), timeout)

    def ensure_integration_bridge(
        self,
        name: str = "br-int",
        datapath_type: str = "system",
        protocols: Sequence[str] = ("OpenFlow14", "OpenFlow15"),
        timeout: float = 10.0,
    ) -> None:
        """Bridge exists, fails secure (no NORMAL fallback while the agent is away), no in-band.

        The bridge also becomes the one ``on_interface_change`` reports on.
        """
        if name != self._int_bridge:
            self._int_bridge = name
            self._reported = None
        self.execute(
            f"ensure bridge {name}",
            [
                AddBridge(name, datapath_type),
                SetColumns(
                    "Bridge",
                    name,
                    columns=(("fail_mode", ["secure"]), ("protocols", sorted(protocols))),
                    keys=(("other_config", {"disable-in-band": "true"}),),
                ),
            ],
            timeout,
        )

    def ensure_vxlan_port(
        self, bridge: str, local_ip: str, name: str = "vxlan0", timeout: float = 10.0
    ) -> int:
        """One flow-based VXLAN port for all remote hosts; returns its ofport.

        ``remote_ip=flow`` and ``key=flow`` make the destination host and VNI per-packet
        choices of the OpenFlow pipeline (``set_field:tun_dst``/``tun_id``), so adding a host
        or a network never touches OVSDB. ``local_ip`` pins the underlay source address.
        """
        self.execute(
            f"ensure vxlan port {name} on {bridge}",
            [
                AddPort(
                    bridge,
                    name,
                    iface_type="vxlan",
                    options=(("key", "flow"), ("local_ip", local_ip), ("remote_ip", "flow")),
                )
            ],
            timeout,
        )
        return self._wait(f"ofport of {name}", timeout, lambda idl: _ofport(idl, name))

    def ensure_internal_port(self, bridge: str, name: str, timeout: float = 10.0) -> int:
        """An internal port owned by the agent (the DHCP responder's); returns its ofport."""
        self.execute(
            f"ensure internal port {name} on {bridge}",
            [AddPort(bridge, name, iface_type="internal")],
            timeout,
        )
        return self._wait(f"ofport of {name}", timeout, lambda idl: _ofport(idl, name))

    def interfaces(self, bridge: str, timeout: float = 10.0) -> list[InterfaceInfo]:
        """Interfaces of ``bridge`` sorted by name (empty if the bridge does not exist)."""
        return self._read(
            f"interfaces of {bridge}", timeout, lambda idl: _bridge_interfaces(idl, bridge) or []
        )

    def get_flow_restore_wait(self, timeout: float = 10.0) -> bool:
        def probe(idl: ovs.db.idl.Idl) -> bool:
            root = _root_row(idl)
            return root is not None and root.other_config.get("flow-restore-wait") == "true"

        return self._read("get flow-restore-wait", timeout, probe)

    def set_flow_restore_wait(self, enabled: bool, timeout: float = 10.0) -> None:
        """While true, a (re)starting ovs-vswitchd keeps the datapath flows and waits for us."""
        value = "true" if enabled else None
        self.execute(
            f"set flow-restore-wait={enabled}",
            [SetColumns("Open_vSwitch", None, keys=(("other_config", {"flow-restore-wait": value}),))],
            timeout,
        )

    def datapath_id(self, bridge: str, timeout: float = 10.0) -> int:
        """The bridge's OpenFlow datapath id, once ovs-vswitchd has published it."""

        def probe(idl: ovs.db.idl.Idl) -> int | None:
            br = next((r for r in idl.tables["Bridge"].rows.values() if r.name == bridge), None)
            dpid = _first(br.datapath_id) if br is not None else None
            return int(dpid, 16) if dpid else None

        return self._wait(f"datapath_id of {bridge}", timeout, probe)

    # ------------------------------------------------------------ plumbing
    def _read(self, what: str, timeout: float, fn: Callable[[ovs.db.idl.Idl], Any]) -> Any:
        if threading.current_thread() is self._thread:
            assert self._idl is not None
            return fn(self._idl)
        return self._wait(what, timeout, lambda idl: (fn(idl),))[0]

    def _wait(self, what: str, timeout: float, probe: Callable[[ovs.db.idl.Idl], Any]) -> Any:
        return self._submit(_WaitJob(what, timeout, probe), timeout)

    def _submit(self, job: _Job, timeout: float) -> Any:
        if self._thread is None or self._stopping:
            raise OvsdbError(job.what, "not started")
        with self._lock:
            self._incoming.append(job)
        self._wake()
        # The IDL thread expires the job at its deadline; the margin only guards a dead thread.
        try:
            return job.future.result(timeout + 5.0)
        except concurrent.futures.TimeoutError:
            raise OvsdbError(job.what, "IDL thread unresponsive") from None

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _loop(self) -> None:
        idl = self._idl
        assert idl is not None
        active: list[_Job] = []
        seen_seqno = -1
        while not self._stopping:
            self.last_loop = time.monotonic()
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
            with self._lock:
                active.extend(self._incoming)
                self._incoming.clear()
            idl.run()
            if idl.change_seqno != seen_seqno or self._reported is None:
                seen_seqno = idl.change_seqno
                self._report_interfaces(idl)
            now = time.monotonic()
            for job in active:
                try:
                    job.step(idl)
                    if not job.future.done() and now >= job.deadline:
                        job.expire()
                except OvsdbError as e:
                    reason = e.reason if e.what == job.what else f"{e.what}: {e.reason}"
                    job.future.set_exception(OvsdbError(job.what, reason))
                except Exception as e:
                    job.future.set_exception(OvsdbError(job.what, repr(e)))
            active = [job for job in active if not job.future.done()]
            poller = ovs.poller.Poller()
            idl.wait(poller)
            poller.fd_wait(self._wake_r, select.POLLIN)
            poller.timer_wait(_TICK_MS)  # go round even when idle: the heartbeat shows the loop lives
            if active:
                poller.timer_wait(max(1, int((min(j.deadline for j in active) - now) * 1000)))
            poller.block()
        for job in active + self._incoming:
            job.future.set_exception(OvsdbError(job.what, "stopped"))

    def _report_interfaces(self, idl: ovs.db.idl.Idl) -> None:
        if not idl.has_ever_connected() or self._on_interface_change is None:
            return
        bridge = self._int_bridge
        current = _bridge_interfaces(idl, bridge) or []
        if (bridge, current) == self._reported:
            return
        self._reported = (bridge, current)
        try:
            self._on_interface_change(list(current))
        except Exception:
            log.exception("event=ovsdb_callback_failed callback=on_interface_change")


def _ofport(idl: ovs.db.idl.Idl, name: str) -> int | None:
    iface = next((r for r in idl.tables["Interface"].rows.values() if r.name == name), None)
    if iface is None:
        return None
    ofport, error = _first(iface.ofport), _first(iface.error)
    if ofport == -1 and error:
        raise OvsdbError(f"ofport of {name}", error)
    return ofport if ofport is not None and ofport > 0 else None
