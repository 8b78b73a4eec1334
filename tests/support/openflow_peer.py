"""An OpenFlow peer on a unix socket that can send garbage to the agent's connection.

Either a minimal switch of its own (handshake, barrier and echo replies: enough for the agent's
connection to come up) or, given ``upstream``, a relay to a real ovs-vswitchd management socket.
``inject`` writes raw bytes to the current connection between two whole messages, so what the
agent's reader gets is exactly the message the test made; ``short_multipart`` makes the own
switch answer multipart requests (flow dumps) with a bare header.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading

from agent.dataplane.openflow import codec
from agent.dataplane.openflow.codec import MsgType

_HEADER = struct.Struct("!BBHI")
DATAPATH_ID = 0xACA


def short_error() -> bytes:
    """An OFPT_ERROR with nothing after its header: decoding it reads past the end."""
    return _HEADER.pack(codec.OFP_VERSION, MsgType.ERROR, 8, 0)


def bad_length() -> bytes:
    """A header whose length is below the header's own 8 bytes: no framing can follow it."""
    return _HEADER.pack(codec.OFP_VERSION, MsgType.ECHO_REQUEST, 4, 0)


def _features_reply(xid: int) -> bytes:
    body = struct.pack("!QIBB2xII", DATAPATH_ID, 0, 254, 0, 0, 0)
    return _HEADER.pack(codec.OFP_VERSION, MsgType.FEATURES_REPLY, 8 + len(body), xid) + body


def _split(buf: bytearray) -> list[bytes]:
    """Whole messages off the front of ``buf`` (a partial one stays)."""
    out = []
    while len(buf) >= 8:
        length = max(8, int.from_bytes(buf[2:4], "big"))
        if len(buf) < length:
            break
        out.append(bytes(buf[:length]))
        del buf[:length]
    return out


class OpenFlowPeer:
    """Listens on ``path``; one thread serves each connection until the agent or the peer closes."""

    def __init__(self, path: str, upstream: str | None = None) -> None:
        self.path = path
        self.upstream = upstream
        self.connections = 0
        self.short_multipart = False
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(8)
        self._current: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="openflow-peer", daemon=True)
        self._accepter.start()

    def inject(self, data: bytes) -> None:
        """Write ``data`` to the current connection between two whole messages."""
        with self._send_lock:
            assert self._current is not None, "no connection to inject into"
            self._current.sendall(data)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._send_lock:
            if self._current is not None:
                with contextlib.suppress(OSError):
                    self._current.shutdown(socket.SHUT_RDWR)
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._send_lock:
                self._current = conn
                self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _send(self, conn: socket.socket, data: bytes) -> None:
        with self._send_lock:
            conn.sendall(data)

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(conn)
            sel = stack.enter_context(selectors.DefaultSelector())
            sel.register(conn, selectors.EVENT_READ, "agent")
            switch = None
            if self.upstream is not None:
                switch = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                try:
                    switch.connect(self.upstream)
                except OSError:
                    return  # the switch is not there (yet): the agent sees a drop and tries again
                sel.register(switch, selectors.EVENT_READ, "switch")
            else:
                self._send(conn, codec.encode_hello(1))
            from_agent, from_switch = bytearray(), bytearray()
            while not self._closed.is_set():
                for key, _ in sel.select(0.2):
                    try:
                        chunk = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    except OSError:
                        return
                    if not chunk:
                        return
                    if key.data == "switch":
                        from_switch += chunk
                        for msg in _split(from_switch):
                            self._send(conn, msg)
                    elif switch is not None:
                        switch.sendall(chunk)
                    else:
                        from_agent += chunk
                        for msg in _split(from_agent):
                            self._answer(conn, msg)

    def _answer(self, conn: socket.socket, msg: bytes) -> None:
        """The minimal switch: what the agent's connection waits for, nothing else."""
        _, msg_type, _, xid = _HEADER.unpack_from(msg)
        if msg_type == MsgType.FEATURES_REQUEST:
            self._send(conn, _features_reply(xid))
        elif msg_type == MsgType.BARRIER_REQUEST:
            self._send(conn, codec.encode_header_only(MsgType.BARRIER_REPLY, xid))
        elif msg_type == MsgType.ECHO_REQUEST:
            self._send(conn, codec.encode_echo(xid, msg[8:], reply=True))
        elif msg_type == MsgType.MULTIPART_REQUEST and self.short_multipart:
            self._send(conn, codec.encode_header_only(MsgType.MULTIPART_REPLY, xid))
