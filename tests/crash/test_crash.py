"""
Nothing acknowledged is ever lost: the installed `twistd xrelay` is killed with SIGKILL
at random moments while clients stream messages into it; afterwards every message that
got a 250 has been delivered to the sandbox (at least once; duplicates are counted and
reported), and no message was ever delivered in part.  What the kills leave behind
(spare pairs, interrupted commits, data of delivered messages) is owed to nobody:
removed at start with info lines, never set aside in spool/corrupt/ as corruption.

The sandbox runs in the test process, so its mailbox survives the relay's deaths.
"""

from __future__ import annotations

import json
import random
import re
import signal
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.python.filepath import FilePath

from tests.conftest import free_port

KILLS = 20
CLIENTS = 4


def message(client: int, seq: int) -> bytes:
    """A message whose every part says who it is, so a truncated copy is obvious."""
    tag = f"{client}-{seq}"
    lines = [f"X-Crash-Tag: {tag}", "From: printer@example.com", "To: client@example.net",
             f"Subject: crash {tag}", "Date: Tue, 01 Dec 2026 10:00:00 +0000",
             f"Message-ID: <{tag}@crash.test>", ""]
    # Some 40 kB, with leading dots (dot-stuffing on both legs) and a last line that
    # only a complete copy has.
    lines += [f".{tag} line {i:04d} " + "x" * 60 for i in range(600)]
    lines.append(f"END OF {tag}")
    return ("\r\n".join(lines) + "\r\n").encode()


def write_config(tmp_path: Path, sandbox, port: int) -> Path:
    account = dict(sandbox.default_account())
    account["messages_per_minute"] = 0  # as fast as it goes: the point is the crashes
    lines = ["[server]", f'listen = ["tcp:{port}:interface=127.0.0.1"]',
             'hostname = "relay.test"', 'state_dir = "state"', "shutdown_timeout = 5", "",
             "[[accounts]]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in account.items()]
    path = tmp_path / "xrelay.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Client(threading.Thread):
    """Streams messages, reconnecting after every crash; remembers which got a 250."""

    def __init__(self, number: int, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.number, self.port, self.stop = number, port, stop
        self.acknowledged: set[str] = set()
        self.attempted = 0

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as smtp:
                    while not self.stop.is_set():
                        seq += 1
                        self.attempted += 1
                        refused = smtp.sendmail("printer@example.com",
                                                ["client@example.net"],
                                                message(self.number, seq))
                        assert refused == {}
                        self.acknowledged.add(f"{self.number}-{seq}")
            except (OSError, smtplib.SMTPException):
                time.sleep(0.02)  # the relay is down or restarting


@pytest.fixture
def sandbox(tmp_path: Path):
    from xrelay.sandbox import Sandbox

    sb = Sandbox(FilePath(str(tmp_path / "sandbox")), reactor=reactor)
    sb.start()
    sb.exchange.messages_per_minute = 0
    yield sb
    pytest_twisted.blockon(sb.stop())


def spool_empty(state: Path) -> bool:
    spool = state / "spool"
    return all(not list((spool / s).glob("*.json")) for s in ("queued", "active",
                                                              "deferred"))


@pytest_twisted.inlineCallbacks
def test_sigkill_loses_nothing_acknowledged(tmp_path: Path, sandbox, run_relay,
                                            record_property):
    port = free_port()
    config = write_config(tmp_path, sandbox, port)
    stop = threading.Event()
    clients = [Client(n, port, stop) for n in range(CLIENTS)]
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    relays: list = []

    def kill_repeatedly() -> None:
        for client in clients:
            client.start()
        for _ in range(KILLS):
            relay = run_relay("--config", str(config))
            relays.append(relay)
            relay.wait_for_port(port)
            time.sleep(rng.uniform(0.05, 0.8))
            relay.process.kill()
            relay.process.wait()
        stop.set()
        for client in clients:
            client.join(15)

    yield threads.deferToThread(kill_repeatedly)
    acknowledged = set().union(*(c.acknowledged for c in clients))
    assert len(acknowledged) >= KILLS  # the clients did get mail through

    relay = run_relay("--config", str(config))
    yield threads.deferToThread(relay.wait_for_port, port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        delivered = {m.data.split(b"X-Crash-Tag: ", 1)[1].split(b"\r\n", 1)[0].decode()
                     for m in sandbox.mailbox.messages}
        if acknowledged <= delivered and spool_empty(tmp_path / "state"):
            break
        yield threads.deferToThread(time.sleep, 0.2)
    # twistd ends a SIGTERM shutdown by re-raising the signal: -15 is a clean stop.
    assert (yield threads.deferToThread(relay.stop)) in (0, -signal.SIGTERM), relay.log()

    tags = Counter()
    for m in sandbox.mailbox.messages:
        tag = re.search(rb"X-Crash-Tag: (\d+)-(\d+)\r\n", m.data)
        assert tag, m.data[:200]
        client, seq = int(tag.group(1)), int(tag.group(2))
        # Whole or nothing: the relay only adds its Received: trace field in front.
        expected = message(client, seq)
        assert m.data.endswith(expected), f"{client}-{seq} delivered in part"
        assert re.fullmatch(rb"(Received: [^\r]*\r\n(\s[^\r]*\r\n)*)*",
                            m.data[:-len(expected)]), m.data[:300]
        tags[f"{client}-{seq}"] += 1
    missing = acknowledged - set(tags)
    assert not missing, f"acknowledged but never delivered (seed {seed}): {sorted(missing)}"
    duplicates = sum(n - 1 for n in tags.values())
    unacknowledged_delivered = len(set(tags) - acknowledged)
    attempted = sum(c.attempted for c in clients)
    report = (f"crash test (seed {seed}): {KILLS} kills, {attempted} messages attempted, "
              f"{len(acknowledged)} acknowledged and all delivered, {duplicates} "
              f"duplicates, {unacknowledged_delivered} delivered without a 250 "
              f"(complete)")
    print(report)
    record_property("crash_report", report)
    assert spool_empty(tmp_path / "state")
    logs = [r.log() for r in relays] + [relay.log()]
    assert not [line for text in logs for line in text.splitlines() if "set aside" in line]
    corrupt = tmp_path / "state" / "spool" / "corrupt"
    assert sorted(p.name for p in corrupt.iterdir()) == []
    assert not list((tmp_path / "state" / "spool" / "data").iterdir())
    failed = list((tmp_path / "state" / "spool" / "failed").glob("*.json"))
    assert failed == []
