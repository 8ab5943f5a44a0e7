"""
The spool keeps exactly what was received, acknowledges only durable entries, groups
fsyncs, and recovers from any interruption.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer

from xrelay.envelope import Envelope, Reply
from xrelay.spool import (ACTIVE, DEFERRED, FAILED, QUEUED, Spool, UnknownEntry,
                          run_inline)

ENVELOPE = Envelope(
    sender="scanner@example.com",
    recipients=("a@example.org", "b@example.org"),
    client_address="192.168.10.7",
    client_helo="scanner",
    account="main",
    received_at=1700000000.0,
)
MESSAGE = b"From: scanner@example.com\r\nSubject: scan\r\n\r\nline 1\r\n.dot\r\n"


class HeldRunner:
    """Runs spool work only when the test says so: shows what is (not) done before."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((f, args, d))
        return d

    def run_one(self) -> None:
        f, args, d = self.calls.pop(0)
        try:
            result = f(*args)
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)


def files(spool: Spool, sub: str) -> list[str]:
    return sorted(os.listdir(os.path.join(spool.directory, sub)))


def receive(spool: Spool, data: bytes = MESSAGE, envelope: Envelope = ENVELOPE):
    message = spool.incoming(envelope)
    for i in range(0, len(data), 7):
        message.write(data[i:i + 7])
    return message.commit()


def test_commit_keeps_bytes_and_envelope_readable(tmp_path) -> None:
    spool = Spool(str(tmp_path / "spool"), run_blocking=run_inline)
    entry_id = receive(spool).result

    assert files(spool, "data") == [entry_id + ".eml"]
    assert files(spool, "queued") == [entry_id + ".json"]
    assert files(spool, "tmp") == []
    with open(os.path.join(spool.directory, "data", entry_id + ".eml"), "rb") as f:
        assert f.read() == MESSAGE
    with open(os.path.join(spool.directory, "queued", entry_id + ".json")) as f:
        check, body = f.read().split("\n", 1)  # the check line, then the record
    assert json.loads(check)["length"] == len(body.encode())
    record = json.loads(body)
    assert record["sender"] == "scanner@example.com"
    assert record["recipients"] == ["a@example.org", "b@example.org"]
    assert record["client_address"] == "192.168.10.7"
    assert record["account"] == "main"
    assert record["size"] == len(MESSAGE)
    assert record["attempts"] == 0 and record["last_reply"] is None
    for sub in ("data", "queued"):
        mode = os.stat(os.path.join(spool.directory, sub, os.listdir(
            os.path.join(spool.directory, sub))[0])).st_mode
        assert stat.S_IMODE(mode) == 0o600  # messages are private


def test_ids_sortable_and_unique(tmp_path) -> None:
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    ids = [receive(spool).result for _ in range(50)]
    assert len(set(ids)) == 50
    assert ids == sorted(ids)
    assert spool.ids(QUEUED) == ids


def test_not_acknowledged_before_durable(tmp_path) -> None:
    runner = HeldRunner()
    spool = Spool(str(tmp_path), run_blocking=runner)
    d = receive(spool)
    assert not d.called
    assert files(spool, "queued") == [] and files(spool, "data") == []
    runner.run_one()
    assert files(spool, "queued") == [d.result + ".json"]


def test_group_commit_batches_messages_arriving_together(tmp_path) -> None:
    runner = HeldRunner()
    spool = Spool(str(tmp_path), run_blocking=runner)
    first = receive(spool)
    others = [receive(spool) for _ in range(5)]  # arrive while the first batch syncs
    assert len(runner.calls) == 1
    runner.run_one()
    assert first.called and not any(d.called for d in others)
    assert len(runner.calls) == 1  # the five wait together in one batch
    runner.run_one()
    assert all(d.called for d in others)
    assert spool.commit_batches == 2 and spool.committed_messages == 6
    assert runner.calls == []


def test_abort_leaves_nothing(tmp_path) -> None:
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    message = spool.incoming(ENVELOPE)
    message.write(MESSAGE)
    message.abort()
    for sub in ("tmp", "data", "queued"):
        assert files(spool, sub) == []


def test_write_streams_to_disk(tmp_path) -> None:
    """A large message goes to the file as it arrives, not into memory."""
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    message = spool.incoming(ENVELOPE)
    chunk = b"x" * 998 + b"\r\n"
    for _ in range(2000):  # 2 MB
        message.write(chunk)
    on_disk = os.path.getsize(os.path.join(spool.directory, "tmp", files(spool, "tmp")[0]))
    assert on_disk >= 2_000_000 - 64 * 1024
    entry_id = message.commit().result
    assert spool.get(entry_id).size == 2_000_000


def test_transitions(tmp_path) -> None:
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    entry_id = receive(spool).result
    entry = spool.get(entry_id)
    assert entry.state == QUEUED
    active = spool.move(entry, ACTIVE).result
    assert files(spool, "active") == [entry_id + ".json"] and files(spool, "queued") == []
    reply = Reply(451, "4.7.500 Server busy. Please try again later.")
    deferred = spool.move(active, DEFERRED, attempts=1, next_attempt=1700000060.0,
                          last_reply=reply, recipients=("b@example.org",)).result
    again = spool.get(entry_id)
    assert again == deferred
    assert again.state == DEFERRED and again.attempts == 1
    assert again.last_reply == reply and again.recipients == ("b@example.org",)
    assert again.original_recipients == ("a@example.org", "b@example.org")
    failed = spool.move(again, FAILED, failed_recipients=(
        ("b@example.org", Reply(550, "5.1.1 unknown")),)).result
    assert spool.get(entry_id).failed_recipients == (("b@example.org",
                                                      Reply(550, "5.1.1 unknown")),)
    assert [e.entry_id for e in spool.entries(FAILED)] == [entry_id]
    assert spool.counts() == {"queued": 0, "active": 0, "deferred": 0, "failed": 1}
    assert spool.remove(failed).result is None
    with pytest.raises(UnknownEntry):
        spool.get(entry_id)
    assert files(spool, "data") == [] and files(spool, "failed") == []


def test_recover(tmp_path) -> None:
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    kept = receive(spool).result
    active = receive(spool).result
    assert spool.move(spool.get(active), ACTIVE).result.state == ACTIVE
    # Leftovers of a crash: a message being received, a message whose data was renamed
    # but whose envelope never was, and a half-rewritten record.
    receiving = spool.incoming(ENVELOPE)
    receiving.write(b"half a mess")
    receiving._file.flush()
    with open(os.path.join(spool.directory, "data", "orphan.eml"), "wb") as f:
        f.write(b"never acknowledged")
    with open(os.path.join(spool.directory, "queued", kept + ".json.tmp"), "wb") as f:
        f.write(b"{")

    Spool(str(tmp_path), run_blocking=run_inline).recover()

    assert files(spool, "tmp") == []
    assert files(spool, "data") == sorted([kept + ".eml", active + ".eml"])
    assert files(spool, "queued") == sorted([kept + ".json", active + ".json"])
    assert files(spool, "active") == []


@pytest_twisted.inlineCallbacks
def test_group_commit_in_threads(tmp_path):
    """With the real thread pool, concurrent commits all land, in fewer batches."""
    spool = Spool(str(tmp_path))
    ids = yield defer.gatherResults([receive(spool) for _ in range(40)])
    assert sorted(ids) == spool.ids(QUEUED)
    assert spool.committed_messages == 40
    assert spool.commit_batches < 40
    for entry_id in ids:
        assert spool.read_data(entry_id) == MESSAGE
