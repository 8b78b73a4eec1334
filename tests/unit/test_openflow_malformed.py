"""Malformed OpenFlow input never kills the connection's reader: it drops the connection and
connects again (the owner replays on the DISCONNECTED → CONNECTED it reports), with a log line.
A real OpenFlowConnection against a small switch of the test's own on a unix socket."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.dataplane.openflow.connection import OpenFlowConnection, OpenFlowConnectionError, State
from agent.sandbox.poll import wait_for
from tests.support.openflow_peer import DATAPATH_ID, OpenFlowPeer, bad_length, short_error


@pytest.fixture
def peer() -> Iterator[OpenFlowPeer]:
    with tempfile.TemporaryDirectory(prefix="aca-of-") as tmp:
        switch = OpenFlowPeer(str(Path(tmp) / "br-int.mgmt"))
        try:
            yield switch
        finally:
            switch.close()


@pytest.fixture
def conn(peer: OpenFlowPeer) -> Iterator[tuple[OpenFlowConnection, list[State]]]:
    states: list[State] = []
    connection = OpenFlowConnection(peer.path, on_state_change=states.append)
    connection.connect(10)
    try:
        yield connection, states
    finally:
        connection.close()


def malformed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=openflow_malformed")]


@pytest.mark.parametrize("garbage", [short_error, bad_length], ids=["short-error", "length-below-header"])
def test_garbage_drops_the_connection_and_the_reader_reconnects(
    peer: OpenFlowPeer,
    conn: tuple[OpenFlowConnection, list[State]],
    garbage: Callable[[], bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    connection, states = conn
    caplog.set_level(logging.INFO)
    assert peer.connections == 1
    peer.inject(garbage())
    wait_for(lambda: peer.connections == 2 and connection.state is State.CONNECTED, what="the reconnect")
    assert connection.reader_alive
    assert states[-2:] == [State.HANDSHAKE, State.CONNECTED]
    assert State.DISCONNECTED in states  # the owner's cue to replay
    (line,) = malformed_lines(caplog)
    assert f"path={peer.path}" in line and "action=reconnect" in line
    connection.barrier(5)  # the new connection serves requests


def test_a_short_reply_fails_its_request_and_the_reader_reconnects(
    peer: OpenFlowPeer, conn: tuple[OpenFlowConnection, list[State]], caplog: pytest.LogCaptureFixture
) -> None:
    connection, _states = conn
    peer.short_multipart = True  # a flow dump is answered by a multipart reply without its body
    with pytest.raises(OpenFlowConnectionError):
        connection.dump_flows(timeout=10)
    wait_for(lambda: peer.connections == 2 and connection.state is State.CONNECTED, what="the reconnect")
    assert connection.reader_alive
    assert len(malformed_lines(caplog)) == 1
    assert connection.datapath_id == DATAPATH_ID
