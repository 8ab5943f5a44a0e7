"""
The commit path's shortcuts keep the promise: spare pairs (data/<id>.eml and
queued/<id>.json, empty, names durable) are made by a thread ahead of need, a few from
the start and more while busy (the reactor thread only opens one, and a commit changes
no name at all), a full disk still refuses before the 354, and the entry just committed
is handed to the delivery engine as written instead of being read back.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from tests.spool.test_spool import ENVELOPE, MESSAGE, files, receive
from xrelay.spool import ACTIVE, DEFERRED, QUEUED, Spool, SpoolFull, run_inline
from xrelay.spool import spares as spares_module


async def _spares_ready(spool: Spool) -> None:
    spool.incoming(ENVELOPE).abort()  # two arrivals in quick succession: busy
    spool.incoming(ENVELOPE).abort()
    for _ in range(500):
        if len(spool._spares) >= 16:
            return
        await threads.deferToThread(lambda: __import__("time").sleep(0.01))
    raise AssertionError("no spare files were made")


@pytest.fixture
def creations(monkeypatch: Any) -> list[str]:
    """os.open calls with O_CREAT, by the name of the thread that made them."""
    made: list[str] = []
    real = os.open

    def recording(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if flags & os.O_CREAT:
            made.append(threading.current_thread().name)
        return real(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", recording)
    return made


@pytest_twisted.ensureDeferred
async def test_reactor_thread_creates_no_file_once_spares_exist(
        tmp_path: Any, creations: list[str]) -> None:
    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    first = await receive(spool)
    await _spares_ready(spool)
    del creations[:]
    renames: list[str] = []
    real_rename = os.rename
    monkeypatch_rename(renames, real_rename)
    try:
        message = spool.incoming(ENVELOPE)
        assert threading.current_thread().name not in creations
        message.write(MESSAGE)
        entry_id = await message.commit()
    finally:
        os.rename = real_rename
    assert threading.current_thread().name not in creations
    assert spool.read_data(entry_id) == MESSAGE
    assert spool.get(entry_id).size == len(MESSAGE)
    assert renames == []  # committed in place: no name changes at all
    with open(os.path.join(spool.directory, "queued", entry_id + ".json"), "rb") as f:
        assert f.read().startswith(b'{"xrelay_record": 1, ')
    # What a crash leaves (the spare pairs: empty records and data) is what recovery
    # removes, quietly.
    Spool(spool.directory, run_blocking=run_inline).recover()
    assert files(spool, "tmp") == [] and files(spool, "corrupt") == []
    assert files(spool, "data") == sorted([first + ".eml", entry_id + ".eml"])
    assert spool.ids(QUEUED) == sorted([first, entry_id])


def monkeypatch_rename(renames: list[str], real: Any) -> None:
    """Record the targets of os.rename (only the envelope is renamed for a spare)."""
    def recording(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
        renames.append(str(dst))
        real(src, dst, *args, **kw)

    os.rename = recording  # type: ignore[assignment]


@pytest_twisted.ensureDeferred
async def test_a_lone_message_finds_a_spare_made_at_start(tmp_path: Any,
                                                         creations: list[str]) -> None:
    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    spool.recover()  # the start: a few spares are made without any message
    for _ in range(500):
        if len(spool._spares) >= spares_module.STANDBY:
            break
        await threads.deferToThread(__import__("time").sleep, 0.01)
    assert len(spool._spares) == spares_module.STANDBY
    # Spares are not entries: listings, counts and lookups do not show them.
    assert spool.ids(QUEUED) == [] and spool.counts()[QUEUED] == 0
    assert list(spool.entries()) == []
    assert len(files(spool, "queued")) == spares_module.STANDBY
    del creations[:]
    message = spool.incoming(ENVELOPE)  # one message now and then: a spare all the same
    assert message.spare and threading.current_thread().name not in creations
    message.write(MESSAGE)
    entry_id = await message.commit()
    assert spool.ids(QUEUED) == [entry_id] and spool.read_data(entry_id) == MESSAGE
    spool.close()


def test_unused_spares_are_renewed(tmp_path: Any, monkeypatch: Any) -> None:
    """A spare's id says when it was made: unused ones are replaced after a while."""
    from twisted.internet.task import Clock

    clock = Clock()
    spool = Spool(str(tmp_path / "spool"), reactor=clock)
    spares = spool._spares
    spares._run = run_inline  # type: ignore[assignment]
    spares.refill()
    old = [entry_id for entry_id, _, _ in spares._ready]
    assert len(old) == spares_module.STANDBY
    made_at = __import__("time").monotonic()
    monkeypatch.setattr(spares_module.time, "monotonic",
                        lambda: made_at + spares_module.RENEW + 1)
    clock.advance(spares_module.RENEW)
    new = [entry_id for entry_id, _, _ in spares._ready]
    assert len(new) == spares_module.STANDBY and not set(new) & set(old)
    assert sorted(files(spool, "data")) == sorted(i + ".eml" for i in new)
    spool.close()


@pytest_twisted.ensureDeferred
async def test_full_disk_drops_the_spares_and_is_refused_before_the_354(
        tmp_path: Any, monkeypatch: Any) -> None:
    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    first = await receive(spool)
    await _spares_ready(spool)
    message = spool.incoming(ENVELOPE)  # a spare
    real_write = message._file.write

    def full(data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    message._file.write = full
    with pytest.raises(SpoolFull):
        message.write(b"x" * 100_000)
    # The spares (and the message) are given back: only the committed one is left.
    assert files(spool, "tmp") == [] and files(spool, "data") == [first + ".eml"]
    real_open = os.open

    def no_room(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_room)
    with pytest.raises(SpoolFull):
        spool.incoming(ENVELOPE)  # what the inbound side turns into 452 before DATA
    monkeypatch.setattr(os, "open", real_open)
    assert real_write  # (the patched file was discarded with its message)
    entry_id = await receive(spool)  # room again: commits work, spares come back
    assert spool.read_data(entry_id) == MESSAGE
    await _spares_ready(spool)


def test_committed_entry_is_handed_over_as_written_and_taken_once(tmp_path: Any) -> None:
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    entry_id = receive(spool).result
    handed = spool.committed(entry_id)
    assert handed == spool.get(entry_id)  # exactly what a read of the JSON gives
    assert spool.take_committed(entry_id) == handed
    assert spool.committed(entry_id) is None and spool.take_committed(entry_id) is None
    other = receive(spool).result
    assert spool.committed(other) is not None
    spool.move(spool.get(other), ACTIVE)  # a transition makes the copy stale: dropped
    assert spool.committed(other) is None


def test_delivery_engine_does_not_read_back_a_committed_entry(tmp_path: Any,
                                                              monkeypatch: Any) -> None:
    from tests.delivery.delivery_harness import Harness

    harness = Harness(tmp_path)
    harness.start()
    assert harness.spool is not None
    reads: list[str] = []
    real_load = harness.spool._load
    monkeypatch.setattr(harness.spool, "_load",
                        lambda state, entry_id: reads.append(entry_id) or real_load(
                            state, entry_id))
    entry_id = harness.receive()
    assert [s.message.entry_id for s in harness.transport.sent] == [entry_id]
    assert reads == []
    assert harness.spool.ids(QUEUED) == [] and harness.spool.counts()[ACTIVE] == 0


@pytest_twisted.ensureDeferred
async def test_spares_are_removed_at_shutdown(tmp_path: Any) -> None:
    from twisted.internet.task import Clock

    class Reactor(Clock):
        """A reactor that runs work in threads and records shutdown triggers."""

        def __init__(self) -> None:
            super().__init__()
            self.triggers: list[Any] = []

        def getThreadPool(self) -> Any:
            return reactor.getThreadPool()

        def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
            reactor.callFromThread(f, *a, **kw)

        def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> None:
            self.triggers.append((phase, event, f))

    fake = Reactor()
    spool = Spool(str(tmp_path / "spool"), reactor=fake)
    await _spares_ready(spool)
    assert len(files(spool, "data")) >= 16
    [(phase, event, drop)] = fake.triggers
    assert (phase, event) == ("after", "shutdown")  # once the services have stopped
    drop()
    assert files(spool, "data") == [] and files(spool, "queued") == []
    assert len(spool._spares) == 0


@pytest_twisted.ensureDeferred
async def test_the_spool_owns_its_threads_and_closes_them(tmp_path: Any) -> None:
    import concurrent.futures

    from xrelay.spool import commit

    # No pool at module level: each spool has its own, shut down with it.
    assert not [v for v in vars(commit).values()
                if isinstance(v, concurrent.futures.ThreadPoolExecutor)]
    before = set(threading.enumerate())
    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    entry_id = await receive(spool)
    mine = [t for t in threading.enumerate() if t not in before
            and t.name.startswith("xrelay-spool")]
    assert mine
    spool.close()
    assert [t for t in mine if t.is_alive()] == []
    assert files(spool, "tmp") == [] and files(spool, "data") == [entry_id + ".eml"]
    # A late state change (the engine's last result while the process ends) still lands.
    moved = await spool.move(spool.get(entry_id), ACTIVE)
    assert spool.get(entry_id) == moved
    assert [t for t in threading.enumerate() if t not in before
            and t.name.startswith("xrelay-spool")] == []


@pytest_twisted.ensureDeferred
async def test_removals_arriving_together_share_one_folder_fsync(tmp_path: Any,
                                                                 monkeypatch: Any) -> None:
    from twisted.internet import defer

    from xrelay.spool import store

    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    ids = await defer.gatherResults([receive(spool) for _ in range(10)])
    synced: list[str] = []
    real = store.fsync_directory

    def counting(path: str) -> None:
        synced.append(os.path.basename(path))
        real(path)

    monkeypatch.setattr(store, "fsync_directory", counting)
    await defer.gatherResults([spool.remove(spool.get(i)) for i in ids])
    assert spool.ids(QUEUED) == [] and not set(files(spool, "data")) & {
        i + ".eml" for i in ids}
    # The first removal runs alone; the nine asked for meanwhile go together.
    assert synced == ["queued", "queued"]
    spool.close()


@pytest_twisted.ensureDeferred
async def test_taking_an_entry_for_an_attempt_waits_for_no_worker(tmp_path: Any) -> None:
    """
    The rename to active/ that starts a delivery attempt is done at once, not queued
    on the spool's workers behind the fdatasyncs of messages being accepted: the
    upstream connection it is for would wait idle (issue 28).  Every worker is held
    busy here; the entry is active all the same, its record unchanged.
    """
    from twisted.internet import defer

    from xrelay.spool.commit import WORKERS

    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    entry_id = await receive(spool)
    entry = spool.get(entry_id)
    gate = threading.Event()
    busy = [spool._committer.in_thread(gate.wait, 60) for _ in range(WORKERS)]
    try:
        taken = spool.move(entry, ACTIVE)
        assert taken.called, "taking an entry waited for the spool's workers"
        active = taken.result
        assert active.state == ACTIVE
        assert spool.ids(ACTIVE) == [entry_id] and spool.ids(QUEUED) == []
        assert spool.get(entry_id) == active
        assert attrs.evolve(active, state=QUEUED) == entry
    finally:
        gate.set()
        await defer.gatherResults(busy)
    # A change of the record is durable work: it still goes through the workers.
    deferred = spool.move(spool.get(entry_id), DEFERRED, next_attempt=1.0)
    assert not deferred.called
    assert (await deferred).state == DEFERRED
    spool.close()
