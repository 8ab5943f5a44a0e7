"""
A burst of connections larger than Twisted's default listen backlog (50) is greeted
whole: with C{max_connections = 1000}, 1,000 clients connecting at the same instant,
while the reactor is busy, all wait in the kernel's accept queue and all get their 220.
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.inbound.harness import make_config
from xrelay.inbound.backlog import with_backlog

BURST = 1000


def listener_queue(port: int) -> tuple[int, int]:
    """(connections waiting for accept, backlog) of the listener, as `ss` shows them."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[1]), int(out[2])


def greetings(clients: list[socket.socket], deadline: float) -> list[bytes]:
    """The first line each client received (b"" for none before the deadline)."""
    received = {c: b"" for c in clients}
    selector = selectors.DefaultSelector()
    for c in clients:
        selector.register(c, selectors.EVENT_READ)
    waiting = len(clients)
    while waiting and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            c = key.fileobj
            assert isinstance(c, socket.socket)
            chunk = c.recv(4096)
            received[c] += chunk
            if b"\r\n" in received[c] or not chunk:
                selector.unregister(c)
                waiting -= 1
    selector.close()
    return [received[c].split(b"\r\n", 1)[0] for c in clients]


def test_the_backlog_is_max_connections_unless_the_endpoint_says() -> None:
    assert with_backlog("tcp:25:interface=127.0.0.1", 1000) == (
        "tcp:25:interface=127.0.0.1:backlog=1000")
    assert with_backlog("tcp:25:backlog=64", 1000) == "tcp:25:backlog=64"
    assert with_backlog("ssl:465:privateKey=k:certKey=c", 10) == (
        "ssl:465:privateKey=k:certKey=c:backlog=50")  # never below Twisted's default
    assert with_backlog("systemd:domain=INET:index=0", 1000) == (
        "systemd:domain=INET:index=0")  # the socket is made by systemd


@pytest.mark.skipif(not __import__("shutil").which("ss"), reason="needs ss (iproute2)")
@pytest_twisted.inlineCallbacks
def test_a_burst_of_1000_connections_is_greeted_whole(relay: Any) -> Any:
    r = yield relay(make_config(max_connections=BURST, max_connections_per_client=BURST,
                                max_connections_per_network=BURST,
                                reserved_connections=0))
    assert listener_queue(r.port)[1] >= BURST
    clients = []
    try:
        # All connect while this test holds the reactor thread: nothing is accepted
        # until every one of them waits in the kernel's accept queue.
        for _ in range(BURST):
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", r.port))
            clients.append(c)
        deadline = time.monotonic() + 30
        while listener_queue(r.port)[0] < BURST and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel finishing handshakes; the reactor stays held
        assert listener_queue(r.port)[0] == BURST
        lines = yield threads.deferToThread(greetings, clients, time.monotonic() + 120)
        assert [line[:4] for line in lines] == [b"220 "] * BURST
    finally:
        for c in clients:
            c.close()
