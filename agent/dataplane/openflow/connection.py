"""One persistent OpenFlow 1.4 client connection to a bridge's management socket.

A background thread owns connecting, the handshake and reading; callers write requests and
block on futures keyed by xid. When the socket drops (ovs-vswitchd restart) the thread
reconnects with backoff and reports each state, so the owner knows to resync its flows.
A malformed message (short, garbage) is never fatal to the reader: nothing after it can be
framed reliably, so the connection is dropped and made anew, like any other loss.

Callbacks run on the reader thread: they must return quickly and must not call blocking
methods of this connection (that would wait for replies only the reader thread can read).
"""

from __future__ import annotations

import collections
import contextlib
import enum
import itertools
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from agent.dataplane.openflow import codec
from agent.dataplane.openflow.codec import BundleCtrl, DecodedFlow, ErrorInfo, FlowModCommand, MsgType
from agent.planner.flows import Action, Flow

log = logging.getLogger("aca.openflow")

_BACKOFF_MIN = 0.1
_BACKOFF_MAX = 2.0
_HANDSHAKE_TIMEOUT = 5.0
_CHUNK_MESSAGES = 512
_SEND_BUFFER = 16 << 20
_SO_SNDBUFFORCE = 32  # Linux (asm-generic/socket.h); Python's socket module lacks it
_BUNDLE_FLAGS = codec.OFPBF_ATOMIC | codec.OFPBF_ORDERED
_REPLY_TYPES = frozenset(
    {MsgType.ECHO_REPLY, MsgType.FEATURES_REPLY, MsgType.BARRIER_REPLY, MsgType.BUNDLE_CONTROL}
)


class State(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    HANDSHAKE = "handshake"
    CONNECTED = "connected"


class OpenFlowError(Exception):
    """The switch rejected a request; ``flow`` is the offending flow when it can be identified."""

    def __init__(self, error: ErrorInfo, flow: Flow | None = None) -> None:
        self.error = error
        self.flow = flow
        text = error.text if flow is None else f"{error.text} for flow: {flow.text()}"
        super().__init__(text)


class OpenFlowConnectionError(ConnectionError):
    """Not connected, or the connection dropped while waiting for a reply."""


class MalformedMessage(ValueError):
    """The switch sent bytes that are not a well-formed OpenFlow message."""


# What decoding a short or garbage message raises (struct unpacking past its end, bad fields).
_MALFORMED = (struct.error, ValueError, IndexError)


@dataclass(frozen=True, slots=True)
class Message:
    """An unsolicited message (packet-in, port-status, error nobody waits for); ``raw`` is whole."""

    type: int
    xid: int
    raw: bytes


class _Pending:
    """A request waiting for its reply; multipart parts accumulate until the last one."""

    __slots__ = ("future", "parts")

    def __init__(self) -> None:
        self.future: Future[list[bytes]] = Future()
        self.parts: list[bytes] = []


class _BundleErrors:
    """Errors for a bundle's add-messages; each chunk of flows went out with consecutive xids."""

    __slots__ = ("chunks", "errors")

    def __init__(self) -> None:
        self.chunks: list[tuple[int, Sequence[Flow]]] = []  # (first xid, its flows)
        self.errors: list[ErrorInfo] = []

    def flow_of(self, xid: int) -> Flow | None:
        for first, flows in self.chunks:
            if first <= xid < first + len(flows):
                return flows[xid - first]
        return None


def _grow_send_buffer(sock: socket.socket) -> None:
    """Room for a whole big bundle in the socket: the agent keeps planning and encoding while
    ovs-vswitchd reads, instead of taking turns with it through a 200 KiB buffer."""
    for option in (_SO_SNDBUFFORCE, socket.SO_SNDBUF):  # FORCE: root only, above wmem_max
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, _SEND_BUFFER)
            return
        except OSError:
            continue


def _frames(sock: socket.socket) -> Iterator[bytes]:
    """Yield whole OpenFlow messages until EOF."""
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 18)
        if not chunk:
            return
        buf += chunk
        pos = 0
        while len(buf) - pos >= 8:
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            if length < 8:
                raise MalformedMessage(f"message length {length} below the 8-byte header")
            if len(buf) - pos < length:
                break
            yield bytes(buf[pos : pos + length])
            pos += length
        del buf[:pos]


class OpenFlowConnection:
    """Thread-safe OpenFlow client with automatic reconnect; see the module docstring."""

    def __init__(
        self,
        path: str,
        on_state_change: Callable[[State], None] | None = None,
        on_message: Callable[[Message], None] | None = None,
    ) -> None:
        self.path = str(path)
        self._on_state_change = on_state_change
        self._on_message = on_message
        self._state = State.DISCONNECTED
        self._state_cond = threading.Condition()
        self._datapath_id: int | None = None
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wlock = threading.Lock()
        self._deferred: collections.deque[bytes] = collections.deque()
        self._live_sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._bundles: list[_BundleErrors] = []
        self._next_xid = 1
        self._bundle_ids = itertools.count(1)
        self._bundle_lock = threading.Lock()
        # Called after each committed bundle with (flow-mods, seconds from CLOSE to COMMIT reply).
        self.on_bundle: Callable[[int, float], None] | None = None

    # ------------------------------------------------------------ lifecycle
    @property
    def state(self) -> State:
        return self._state

    @property
    def reader_alive(self) -> bool:
        """The connection thread (connecting, reading, reconnecting) is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def datapath_id(self) -> int | None:
        """From the last features reply; re-read on every (re)connect."""
        return self._datapath_id

    def connect(self, timeout: float = 10.0) -> None:
        """Start the connection thread (if needed) and wait until CONNECTED.

        On timeout the thread keeps retrying in the background; ``close()`` stops it.
        """
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"openflow:{self.path}", daemon=True)
            self._thread.start()
        self.wait_connected(timeout)

    def wait_connected(self, timeout: float) -> None:
        with self._state_cond:
            if not self._state_cond.wait_for(lambda: self._state is State.CONNECTED, timeout):
                raise TimeoutError(f"OpenFlow connection to {self.path} not up within {timeout}s")

    def close(self) -> None:
        self._stop.set()
        sock = self._live_sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _set_state(self, state: State) -> None:
        with self._state_cond:
            if state is self._state:
                return
            self._state = state
            self._state_cond.notify_all()
        log.debug("event=openflow_state path=%s state=%s", self.path, state.value)
        if self._on_state_change is not None:
            try:
                self._on_state_change(state)
            except Exception:
                log.exception("event=openflow_callback_failed callback=on_state_change path=%s", self.path)

    def _run(self) -> None:
        delay = _BACKOFF_MIN
        self._set_state(State.CONNECTING)
        while not self._stop.is_set():
            sock = self._live_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            was_connected = False
            try:
                sock.settimeout(_HANDSHAKE_TIMEOUT)
                _grow_send_buffer(sock)
                sock.connect(self.path)
                self._set_state(State.HANDSHAKE)
                frames = _frames(sock)
                self._handshake(sock, frames)
                sock.settimeout(None)
                self._sock = sock
                delay = _BACKOFF_MIN
                was_connected = True
                self._set_state(State.CONNECTED)
                for msg in frames:
                    self._dispatch(msg)
            except _MALFORMED as exc:
                log.warning("event=openflow_malformed path=%s error=%s action=reconnect", self.path, exc)
            except OSError as exc:
                if not self._stop.is_set():
                    log.info("event=openflow_connection_error path=%s error=%s", self.path, exc)
            finally:
                self._sock = None
                sock.close()
                self._fail_pending()
            if was_connected:
                self._set_state(State.DISCONNECTED)  # the owner's cue to resync after reconnect
            if self._stop.wait(delay):
                break
            self._set_state(State.CONNECTING)
            delay = min(delay * 2, _BACKOFF_MAX)
        self._live_sock = None
        self._set_state(State.DISCONNECTED)

    def _handshake(self, sock: socket.socket, frames: Iterator[bytes]) -> None:
        """Hello (settle on 1.4), features (datapath id), then enable packet-ins in NXT_PACKET_IN2 format."""
        sock.sendall(codec.encode_hello(self._alloc_xids(1)))
        features_xid = None
        for msg in frames:
            _, msg_type, _, xid = codec.parse_header(msg)
            if msg_type == MsgType.HELLO:
                if codec.OFP_VERSION not in codec.decode_hello_versions(msg):
                    raise ConnectionError("switch does not offer OpenFlow 1.4")
                features_xid = self._alloc_xids(1)
                sock.sendall(codec.encode_header_only(MsgType.FEATURES_REQUEST, features_xid))
            elif msg_type == MsgType.ECHO_REQUEST:
                sock.sendall(codec.encode_echo(xid, msg[8:], reply=True))
            elif msg_type == MsgType.ERROR:
                raise ConnectionError(f"handshake failed: {codec.decode_error(msg).text}")
            elif msg_type == MsgType.FEATURES_REPLY and xid == features_xid:
                self._datapath_id = codec.decode_features_reply(msg)
                sock.sendall(codec.encode_set_config(self._alloc_xids(1)))
                sock.sendall(codec.encode_set_packet_in_format(self._alloc_xids(1)))
                return
        raise ConnectionError("connection closed during handshake")

    def _fail_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for p in pending.values():
            if not p.future.done():
                p.future.set_exception(OpenFlowConnectionError(f"connection to {self.path} lost"))

    # ------------------------------------------------------------ reading
    def _dispatch(self, msg: bytes) -> None:
        _, msg_type, _, xid = codec.parse_header(msg)
        if msg_type == MsgType.ECHO_REQUEST:
            self._send_control(codec.encode_echo(xid, msg[8:], reply=True))
            return
        with self._lock:
            pending = self._pending.get(xid)
            bundle = next((b for b in self._bundles if b.flow_of(xid) is not None), None)
        if pending is not None and pending.future.done():
            pending = None  # a second answer to one request (a confused peer): not ours to take
        if msg_type == MsgType.ERROR:
            error = codec.decode_error(msg)
            if bundle is not None:
                bundle.errors.append(error)
            elif pending is not None:
                pending.future.set_exception(OpenFlowError(error))
            else:
                self._unsolicited(msg_type, xid, msg)
        elif pending is not None and msg_type == MsgType.MULTIPART_REPLY:
            more = codec.multipart_more(msg)
            pending.parts.append(msg)
            if not more:
                pending.future.set_result(pending.parts)
        elif pending is not None and msg_type in _REPLY_TYPES:
            pending.future.set_result([msg])
        else:
            self._unsolicited(msg_type, xid, msg)

    def _unsolicited(self, msg_type: int, xid: int, msg: bytes) -> None:
        if self._on_message is None:
            log.debug("event=openflow_message_ignored path=%s type=%d", self.path, msg_type)
            return
        try:
            self._on_message(Message(msg_type, xid, msg))
        except Exception:
            log.exception("event=openflow_callback_failed callback=on_message path=%s", self.path)

    # ------------------------------------------------------------ writing
    def _alloc_xids(self, n: int) -> int:
        """First of ``n`` consecutive xids (bundles identify failed messages by xid range)."""
        with self._lock:
            if self._next_xid + n >= 1 << 32:
                self._next_xid = 1
            first = self._next_xid
            self._next_xid += n
            return first

    def _write(self, chunks: Iterator[bytes] | Sequence[bytes]) -> None:
        try:
            with self._wlock:
                sock = self._sock
                if sock is None:
                    raise OpenFlowConnectionError(f"not connected to {self.path}")
                for chunk in chunks:
                    sock.sendall(chunk)
        except OSError as exc:
            raise OpenFlowConnectionError(f"write to {self.path} failed: {exc}") from exc
        finally:
            self._flush_deferred()

    def _send_control(self, data: bytes) -> None:
        """Reader-thread writes (echo replies) never wait for the write lock.

        A caller may hold it while blocked writing a big bundle; if the reader waited too, it
        would stop draining replies and OVS would stop reading from us: a deadlock.
        """
        self._deferred.append(data)
        self._flush_deferred()

    def _flush_deferred(self) -> None:
        while self._deferred and self._wlock.acquire(blocking=False):
            try:
                data = b"".join(self._deferred.popleft() for _ in range(len(self._deferred)))
                if self._sock is not None:
                    self._sock.sendall(data)
            except OSError:
                pass  # the reader sees the broken socket and reconnects
            finally:
                self._wlock.release()

    def _register(self, xid: int) -> _Pending:
        pending = _Pending()
        with self._lock:
            self._pending[xid] = pending
        return pending

    def _unregister(self, *xids: int) -> None:
        with self._lock:
            for xid in xids:
                self._pending.pop(xid, None)

    def _check_caller(self) -> None:
        if threading.current_thread() is self._thread:
            raise RuntimeError("blocking OpenFlow call from the connection's own callback thread")

    @staticmethod
    def _wait(pending: _Pending, deadline: float) -> list[bytes]:
        try:
            return pending.future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise TimeoutError("no reply from the switch in time") from None

    def _request(self, msg: bytes, xid: int, timeout: float) -> list[bytes]:
        self._check_caller()
        pending = self._register(xid)
        try:
            self._write([msg])
            return self._wait(pending, time.monotonic() + timeout)
        finally:
            self._unregister(xid)

    # ------------------------------------------------------------ public requests
    def barrier(self, timeout: float = 10.0) -> None:
        xid = self._alloc_xids(1)
        self._request(codec.encode_header_only(MsgType.BARRIER_REQUEST, xid), xid, timeout)

    def dump_flows(self, cookie: int = 0, cookie_mask: int = 0, timeout: float = 30.0) -> list[DecodedFlow]:
        """All flows of all tables (optionally only those whose cookie matches under the mask)."""
        with self.dumping_flows(cookie, cookie_mask, timeout) as parts:
            return [f for part in parts() for f in codec.decode_flow_stats_reply(part)]

    @contextlib.contextmanager
    def dumping_flows(
        self, cookie: int = 0, cookie_mask: int = 0, timeout: float = 30.0
    ) -> Iterator[Callable[[], list[bytes]]]:
        """The flow stats request sent on entry; the yielded function waits for the reply's parts
        (``timeout`` from then). The switch produces the dump and the reader thread collects it
        while the caller works, e.g. plans what to compare it with."""
        self._check_caller()
        xid = self._alloc_xids(1)
        pending = self._register(xid)
        try:
            self._write([codec.encode_flow_stats_request(xid, cookie, cookie_mask)])
            yield lambda: self._wait(pending, time.monotonic() + timeout)
        finally:
            self._unregister(xid)

    def delete_flows(self, cookie: int, cookie_mask: int, timeout: float = 10.0) -> None:
        """Delete every flow whose cookie matches under the mask (outside any bundle); returns
        once the switch has processed it (barrier)."""
        xid = self._alloc_xids(1)
        self._write([codec.encode_flow_delete(xid, cookie, cookie_mask)])
        self.barrier(timeout)

    def send_packet_out(self, in_port: int, actions: Sequence[Action], data: bytes) -> None:
        """Fire and forget; a rejection arrives as an unsolicited error message."""
        self._write([codec.encode_packet_out(self._alloc_xids(1), in_port, actions, data)])

    @contextlib.contextmanager
    def bundle(self, timeout: float = 30.0) -> Iterator[Bundle]:
        """An atomic, ordered bundle to fill and ``commit()``; left without a commit (an
        exception, or nothing to apply) it is discarded. One bundle at a time per connection."""
        self._check_caller()
        with self._bundle_lock:
            bundle = Bundle(self, time.monotonic() + timeout)
            try:
                yield bundle
            finally:
                bundle.end()

    def apply_bundle(self, deletes: Sequence[Flow], adds: Sequence[Flow], timeout: float = 30.0) -> None:
        """DELETE_STRICTs then ADDs as one atomic bundle; returns once committed."""
        with self.bundle(timeout) as bundle:
            bundle.delete(deletes)
            bundle.add(adds)
            bundle.commit()


class Bundle:
    """One atomic, ordered bundle, sent while it is filled: flow-mods go out in chunks as they
    are added, so the switch checks them while the caller is still planning the rest.

    ``commit()`` closes it; the switch reports refused messages before the CLOSE reply (one
    connection is handled in order), so a bundle with any refused message is discarded, never
    committed, and ``OpenFlowError`` names the offending flow. Commit-time failures roll back in
    OVS. Either way the table is unchanged. After a ``TimeoutError`` or a lost connection the
    outcome is unknown (OVS drops uncommitted bundles with the connection): dump and resync.
    Made by ``OpenFlowConnection.bundle()``; used by one thread.
    """

    def __init__(self, conn: OpenFlowConnection, deadline: float) -> None:
        self._conn = conn
        self._deadline = deadline
        self._id = next(conn._bundle_ids) & 0xFFFFFFFF
        self._errors = _BundleErrors()
        self._opened: _Pending | None = None
        self._open_xid = 0
        self._queued: list[Flow] = []
        self._command = FlowModCommand.ADD
        self._done = False
        self._messages = 0  # flow-mods sent in it

    def add(self, flows: Sequence[Flow]) -> None:
        self._queue(flows, FlowModCommand.ADD)

    def delete(self, flows: Sequence[Flow]) -> None:
        self._queue(flows, FlowModCommand.DELETE_STRICT)

    def _queue(self, flows: Sequence[Flow], command: FlowModCommand) -> None:
        if command is not self._command:
            self._flush()
            self._command = command
        self._queued.extend(flows)
        if len(self._queued) >= _CHUNK_MESSAGES:
            self._flush()

    def _control(self, ctrl: BundleCtrl, xid: int) -> bytes:
        return codec.encode_bundle_control(self._id, ctrl, _BUNDLE_FLAGS, xid)

    def _flush(self) -> None:
        flows, self._queued = self._queued, []
        if not flows:
            return
        conn = self._conn
        head = b""
        if self._opened is None:
            self._open_xid = conn._alloc_xids(1)
            self._opened = conn._register(self._open_xid)
            with conn._lock:
                conn._bundles.append(self._errors)
            head = self._control(BundleCtrl.OPEN_REQUEST, self._open_xid)
        first = conn._alloc_xids(len(flows))
        self._messages += len(flows)
        self._errors.chunks.append((first, flows))
        enc, bid, cmd = codec.encode_bundle_add, self._id, self._command
        conn._write(
            [head, b"".join([enc(bid, _BUNDLE_FLAGS, f, cmd, first + i) for i, f in enumerate(flows)])]
        )

    def commit(self) -> None:
        """Close and commit (nothing to do when nothing was added)."""
        self._flush()
        if self._opened is None:
            self._done = True
            return
        conn = self._conn
        closing = time.perf_counter()
        close_xid = conn._alloc_xids(1)
        closed = conn._register(close_xid)
        try:
            conn._write([self._control(BundleCtrl.CLOSE_REQUEST, close_xid)])
            conn._wait(self._opened, self._deadline)
            try:
                conn._wait(closed, self._deadline)
            except OpenFlowError:
                if not self._errors.errors:
                    raise
            self._raise_refused()
        finally:
            conn._unregister(close_xid)
        commit_xid = conn._alloc_xids(1)
        committed = conn._register(commit_xid)
        self._done = True  # from here on OVS either commits or rolls back: nothing to discard
        try:
            conn._write([self._control(BundleCtrl.COMMIT_REQUEST, commit_xid)])
            conn._wait(committed, self._deadline)
        except OpenFlowError:
            self._raise_refused()
            raise
        finally:
            conn._unregister(commit_xid)
        if conn.on_bundle is not None:
            conn.on_bundle(self._messages, time.perf_counter() - closing)

    def _raise_refused(self) -> None:
        if self._errors.errors:
            error = min(self._errors.errors, key=lambda e: e.xid)
            raise OpenFlowError(error, self._errors.flow_of(error.xid))

    def end(self) -> None:
        """Stop tracking its replies; discard it on the switch unless it was committed."""
        conn = self._conn
        if self._opened is not None:
            conn._unregister(self._open_xid)
            with conn._lock:
                conn._bundles.remove(self._errors)
            if not self._done:
                self._discard()

    def _discard(self) -> None:
        xid = self._conn._alloc_xids(1)
        try:
            self._conn._request(
                self._control(BundleCtrl.DISCARD_REQUEST, xid),
                xid,
                max(0.1, self._deadline - time.monotonic()),
            )
        except (OpenFlowError, ConnectionError, TimeoutError) as exc:
            log.warning("event=openflow_bundle_discard_failed bundle=%d error=%s", self._id, exc)
