"""TCP/UDP/ICMP probes between VM namespaces for the security-group tests.

An echo server inside a VM logs every datagram and every line it receives (with the sender's
address) and echoes it back, so one probe proves both directions: the request arrived (the log)
and the reply came back (the client's output). A datagram ``send:<ip>:<port>:<payload>`` also
makes it send ``payload`` from that port to ``ip:port``: a packet the server starts. "Nothing
arrived" is only concluded after a later probe on the same server did arrive. A ``Session`` is
one long-lived TCP connection driven line by line from the test, a ``UdpSession`` one UDP
socket with a fixed port (one conntrack connection).
"""

from __future__ import annotations

import os
import select
import subprocess
import time

from agent.sandbox.hosts import Sandbox
from agent.sandbox.poll import wait_for

_SERVER = r"""
import socket, sys, threading
host_ports = [int(p) for p in sys.argv[1:]]
log = sys.stdout
lock = threading.Lock()
def note(proto, src, data):
    with lock:
        log.write(f"{proto} {src[0]} {data}\n"); log.flush()
def serve_tcp(conn, src):
    with conn:
        buf = b""
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                note("tcp", src, line.decode())
                conn.sendall(line + b"\n")
def tcp(port):
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port)); srv.listen(64)
    while True:
        conn, src = srv.accept()
        threading.Thread(target=serve_tcp, args=(conn, src), daemon=True).start()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, src = s.recvfrom(4096)
        note("udp", src, data.decode()); s.sendto(data, src)
        if data.startswith(b"send:"):  # send:<ip>:<port>:<payload>, from this socket
            _, ip, to_port, payload = data.decode().split(":", 3)
            s.sendto(payload.encode(), (ip, int(to_port)))
for p in host_ports:
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
    threading.Thread(target=udp, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

_CLIENT = r"""
import socket, sys
proto, ip, payload = sys.argv[1], sys.argv[2], sys.argv[4]
port, timeout = int(sys.argv[3]), float(sys.argv[5])
try:
    if proto == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(timeout)
        s.sendto(payload.encode(), (ip, port)); print(s.recvfrom(4096)[0].decode())
    else:
        s = socket.create_connection((ip, port), timeout=timeout)
        s.sendall(payload.encode() + b"\n"); print(s.makefile().readline().strip())
except OSError as exc:
    print(f"failed {type(exc).__name__}")
"""

_UDP_SESSION = r"""
import select, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
peer = (sys.argv[2], int(sys.argv[3]))
print("bound", flush=True)
while True:
    ready = select.select([sys.stdin, s], [], [])[0]
    if sys.stdin in ready:
        line = sys.stdin.readline()
        if not line:
            break
        s.sendto(line.strip().encode(), peer)
    if s in ready:
        print(s.recvfrom(4096)[0].decode(), flush=True)
"""

_SESSION = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("connected", flush=True)
f = s.makefile()
for line in sys.stdin:
    timeout, payload = line.rstrip("\n").split(" ", 1)
    s.settimeout(float(timeout))
    try:
        s.sendall(payload.encode() + b"\n"); print(f.readline().strip() or "closed", flush=True)
    except OSError as exc:
        print(f"failed {type(exc).__name__}", flush=True)
"""


def _netns(sb: Sandbox, vm: str) -> str:
    return sb.vms()[vm].netns


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no line from {proc.args!r} (got {buf!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            raise EOFError(f"{proc.args!r} exited (got {buf!r})")
        buf += chunk
    return buf.decode().strip()


class Echo:
    """The echo server inside ``vm`` on ``ports`` (TCP and UDP each), with its log."""

    def __init__(self, sb: Sandbox, vm: str, ports: tuple[int, ...]) -> None:
        cmd = ["ip", "netns", "exec", _netns(sb, vm), "python3", "-u", "-c", _SERVER, *map(str, ports)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=False)
        self.lines: list[str] = []
        assert _read_line(self.proc, time.monotonic() + 10) == "ready"  # type: ignore[arg-type]

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        while select.select([self.proc.stdout.fileno()], [], [], 0)[0]:
            self.lines.append(_read_line(self.proc, time.monotonic() + 5))  # type: ignore[arg-type]

    def seen(self, payload: str) -> bool:
        self._drain()
        return any(line.split(" ", 2)[2] == payload for line in self.lines)

    def wait_for(self, payload: str, timeout: float = 10.0) -> None:
        wait_for(lambda: self.seen(payload), timeout, f"{payload!r} at the echo server")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def probe(sb: Sandbox, vm: str, proto: str, ip: str, port: int, payload: str, timeout: float = 5.0) -> bool:
    """One TCP connection or UDP datagram from ``vm``; True when the echo came back within
    ``timeout`` (generous by default: a loaded machine must not fail what passes; a probe that
    must not pass gives a short one)."""
    out = sb.vm_exec(vm, ["python3", "-c", _CLIENT, proto, ip, str(port), payload, str(timeout)]).stdout
    return out.strip() == payload


def ping(sb: Sandbox, vm: str, ip: str, timeout: int = 3) -> bool:
    return sb.vm_exec(vm, ["ping", "-c", "1", "-W", str(timeout), ip]).returncode == 0


class UdpSession:
    """A UDP socket in ``vm`` bound to ``port`` (one conntrack connection with its peer): ``send``
    sends to the peer, ``seen`` tells whether a datagram with that payload came back to it
    (from anyone)."""

    def __init__(self, sb: Sandbox, vm: str, port: int, peer_ip: str, peer_port: int) -> None:
        cmd = ["ip", "netns", "exec", _netns(sb, vm), "python3", "-u", "-c", _UDP_SESSION, str(port), peer_ip,
               str(peer_port)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False)
        self.lines: list[str] = []
        assert _read_line(self.proc, time.monotonic() + 10) == "bound"  # type: ignore[arg-type]

    def send(self, payload: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(payload.encode() + b"\n")  # type: ignore[arg-type]
        self.proc.stdin.flush()

    def seen(self, payload: str) -> bool:
        assert self.proc.stdout is not None
        while select.select([self.proc.stdout.fileno()], [], [], 0)[0]:
            self.lines.append(_read_line(self.proc, time.monotonic() + 5))  # type: ignore[arg-type]
        return payload in self.lines

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Session:
    """One TCP connection from ``vm`` kept open; ``send`` is True when the line came back within
    ``timeout`` (generous for what must pass, short for what must not)."""

    def __init__(self, sb: Sandbox, vm: str, ip: str, port: int) -> None:
        cmd = ["ip", "netns", "exec", _netns(sb, vm), "python3", "-u", "-c", _SESSION, ip, str(port)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False)
        assert _read_line(self.proc, time.monotonic() + 10) == "connected"  # type: ignore[arg-type]

    def send(self, payload: str, timeout: float = 5.0) -> bool:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{timeout} {payload}\n".encode())  # type: ignore[arg-type]
        self.proc.stdin.flush()
        return _read_line(self.proc, time.monotonic() + timeout + 5) == payload  # type: ignore[arg-type]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
