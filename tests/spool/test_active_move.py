"""
Taking an entry for an attempt (to active/) is a rename without fsync: it need not
survive a crash (recovery requeues active entries anyway), while every other
transition stays durable.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

from xrelay.envelope import Envelope
from xrelay.spool import ACTIVE, DEFERRED, QUEUED, Spool, run_inline


@pytest.fixture
def fsyncs(monkeypatch: Any) -> list[int]:
    calls: list[int] = []
    real = os.fsync
    here = threading.current_thread()

    def counting(fd: int) -> None:
        if threading.current_thread() is here:  # not other spools' threads
            calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_to_active_is_visible_but_not_synced_and_recovers_to_queued(
        tmp_path: Any, fsyncs: list[int]) -> None:
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    incoming = spool.incoming(Envelope("a@example.com", ("b@example.org",)))
    incoming.write(b"Subject: x\r\n\r\n")
    entry = spool.get(incoming.commit().result)
    fsyncs.clear()
    active = spool.move(entry, ACTIVE).result
    assert fsyncs == []
    assert os.listdir(tmp_path / "active") == [entry.entry_id + ".json"]
    assert os.listdir(tmp_path / "queued") == []
    # A transition that changes the record, or leaves active, is synced as before.
    assert spool.move(active, DEFERRED, attempts=1).result.state == DEFERRED
    assert len(fsyncs) == 3  # the rewritten record, deferred/, active/
    fsyncs.clear()
    entry = spool.get(entry.entry_id)
    assert spool.move(entry, ACTIVE, attempts=2).result.state == ACTIVE
    assert len(fsyncs) == 3  # changed on the way in: durable
    restarted = Spool(str(tmp_path), run_blocking=run_inline)
    restarted.recover()
    assert restarted.get(entry.entry_id).state == QUEUED
