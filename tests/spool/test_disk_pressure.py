"""
A near-full disk neither storms nor loses bounces: a bounce and the move of its
original are one step (both durable, or neither happened and the entry waits with
back-off), new mail is refused with 452 4.3.1 below C{server.min_free_space} while the
reserve still takes bounces and state changes, and every acknowledged message ends up
delivered or bounced exactly once after space returns.

Two ways: ENOSPC injected at each allocating write of the bounce step in turn (every
user), and a real size-limited tmpfs (as root; skipped otherwise).
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import task

from tests.delivery.delivery_harness import MESSAGE, START, account, config
from xrelay.delivery import DeliveryEngine
from xrelay.diskspace import MEASURE_EVERY
from xrelay.delivery.testing import ScriptedTransport, accept_all, per_recipient
from xrelay.envelope import Envelope, OutboundMessage, Reply
from xrelay.spool import ACTIVE, DEFERRED, FAILED, QUEUED, Spool, _Incoming, run_inline

# Exchange Online's reply for a recipient that does not exist (as the sandbox and
# tests/delivery/test_engine.py use it).
UNKNOWN = Reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by "
                "SMTP address lookup")
SENDER = "scanner@example.com"
RELAY_USER = "relay-main@example.com"


def upstream(message: OutboundMessage) -> Any:
    """The upstream: the original's recipient does not exist; bounces go through."""
    if message.sender == RELAY_USER:
        return accept_all(message)
    return per_recipient({"gone@example.org": UNKNOWN})(message)


class FullDisk:
    """
    From the C{fail_from}-th allocating operation on (creating a file, writing,
    flushing or fsyncing a file) every one fails with ENOSPC, until L{space_returns}.
    Directory fsyncs and renames allocate nothing and pass, as on a real file system.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_from: int | None) -> None:
        self.fail_from = fail_from
        self.count = 0
        self.failed = 0
        self._dirs: set[int] = set()
        real_open, real_write, real_fsync = os.open, os.write, os.fsync
        real_prepare = _Incoming.prepare

        here = threading.current_thread()

        def allocating() -> None:
            if threading.current_thread() is not here:
                return  # another spool's thread (of an earlier test): not this disk
            self.count += 1
            if self.fail_from is not None and self.count >= self.fail_from:
                self.failed += 1
                raise OSError(errno.ENOSPC, "No space left on device")

        def fake_open(path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
            if flags & os.O_CREAT:
                allocating()
            fd = real_open(path, flags, mode, **kw)
            if flags & getattr(os, "O_DIRECTORY", 0):
                self._dirs.add(fd)
            return fd

        def fake_write(fd: int, data: Any) -> int:
            allocating()
            return real_write(fd, data)

        def fake_fsync(fd: Any) -> None:
            if fd not in self._dirs:
                allocating()
            real_fsync(fd)

        def fake_prepare(incoming: _Incoming) -> None:
            allocating()  # the buffered data reaching the disk (the flush)
            real_prepare(incoming)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "write", fake_write)
        monkeypatch.setattr(os, "fsync", fake_fsync)
        monkeypatch.setattr(_Incoming, "prepare", fake_prepare)

    def space_returns(self) -> None:
        self.fail_from = None


def run_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_from: int | None
             ) -> dict[str, Any]:
    """
    One message for a recipient that exists and one that does not; the disk fills up
    at the chosen write of the bounce step; later space returns and time passes.
    """
    clock = task.Clock()
    clock.advance(START)
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    transport = ScriptedTransport(script=[upstream] * 50)
    engine = DeliveryEngine(config(account(), first_retry=60), spool,
                            {"main": transport}, clock=clock, random=lambda: 0.5)
    engine.startService()
    incoming = spool.incoming(Envelope(SENDER, ("a@example.org", "gone@example.org"),
                                       account="main", received_at=START))
    incoming.write(MESSAGE)
    entry_id = incoming.commit().result

    disk = FullDisk(monkeypatch, fail_from)
    engine.submitted(entry_id)  # delivered to a@, refused for gone@: the bounce step
    ops = disk.count
    for _ in range(5):  # while the disk is full: no bounce goes out, none is lost
        clock.advance(600)
    during = [s for s in transport.sent if s.message.sender == RELAY_USER]
    disk.space_returns()
    for _ in range(30):
        clock.advance(600)
    bounces = [s for s in transport.sent if s.message.sender == RELAY_USER]
    originals = [s for s in transport.sent if s.message.sender == SENDER]
    engine.stopService()
    return {"ops": ops, "failed": disk.failed, "during": during, "bounces": bounces,
            "to_a": sum("a@example.org" in s.message.recipients for s in originals),
            "spool": spool, "entry_id": entry_id}


def the_outcome_is_right(result: dict[str, Any]) -> None:
    spool: Spool = result["spool"]
    assert len(result["bounces"]) == 1, [s.message.entry_id for s in result["bounces"]]
    bounce = result["bounces"][0]
    assert bounce.message.recipients == (SENDER,)
    assert b"gone@example.org" in bounce.data and b"5.1.10" in bounce.data
    assert result["to_a"] == 1  # the delivered recipient is never sent twice
    failed = spool.get(result["entry_id"])
    assert failed.state == FAILED and failed.failed_recipients == (
        ("gone@example.org", UNKNOWN),)
    for state in (QUEUED, ACTIVE, DEFERRED):
        assert spool.ids(state) == [], state
    assert os.listdir(os.path.join(spool.directory, "tmp")) == []


def test_without_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run_once(tmp_path, monkeypatch, None)
    the_outcome_is_right(result)
    assert result["ops"] >= 8  # the bounce's files and the original's record


def allocating_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    with monkeypatch.context() as m:
        return int(run_once(tmp_path / "count", m, None)["ops"])


def test_enospc_at_each_write_of_a_bounce(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    steps = allocating_steps(tmp_path, monkeypatch)
    for k in range(1, steps + 1):
        with monkeypatch.context() as m:
            result = run_once(tmp_path / f"k{k}", m, k)
        assert result["failed"] >= 1, k  # the disk really was full at that step
        assert result["during"] == [], f"a bounce went out while the disk was full ({k})"
        try:
            the_outcome_is_right(result)
        except AssertionError as e:
            raise AssertionError(f"ENOSPC from allocating write {k} of {steps}: {e}") from e


def test_a_bounce_left_by_a_crash_before_the_move_is_withdrawn(tmp_path: Path) -> None:
    """
    The crash window of the one step: the bounce is committed, the original's record
    was not yet written.  After the restart the original is tried again and bounced
    once; the stray copy is gone.
    """
    clock = task.Clock()
    clock.advance(START)
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    incoming = spool.incoming(Envelope(SENDER, ("gone@example.org",), account="main",
                                       received_at=START))
    incoming.write(MESSAGE)
    original = incoming.commit().result
    stray = spool.incoming(Envelope(RELAY_USER, (SENDER,), account="main",
                                    received_at=START + 5), bounce_of=original)
    stray.write(b"Subject: Undelivered Mail Returned to Sender\r\n\r\nstray\r\n")
    stray_id = stray.commit().result
    assert spool.move(spool.get(original), ACTIVE).result.state == ACTIVE  # the crash: left active

    restarted = Spool(str(tmp_path), run_blocking=run_inline)
    transport = ScriptedTransport(script=[upstream] * 10)
    engine = DeliveryEngine(config(account()), restarted, {"main": transport},
                            clock=clock, random=lambda: 0.5)
    engine.startService()
    clock.advance(1)
    bounces = [s for s in transport.sent if s.message.sender == RELAY_USER]
    assert len(bounces) == 1 and bounces[0].message.entry_id != stray_id
    assert b"stray" not in bounces[0].data
    assert restarted.get(original).state == FAILED


# -- a real small file system -----------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                           str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill_until(directory: Path, free: int) -> Path:
    """A filler file that leaves about C{free} bytes on the file system."""
    from xrelay.diskspace import free_bytes

    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            missing = free_bytes(str(directory)) - free
            if free and missing <= 0:
                break
            try:
                # tmpfs counts used pages per CPU in batches: statvfs can say 0 while
                # a few pages still fit, so "full" means a write really failed.
                os.write(fd, b"\0" * max(min(missing, 65536), 4096))
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


def send(port: int, recipient: str) -> tuple[int, bytes]:
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("scanner")
        code, text = client.mail(SENDER)
        if code != 250:  # the reserve is reached: refused at MAIL
            return code, text
        client.rcpt(recipient)
        try:
            return client.data(b"Subject: scan\r\n\r\n" + b"x" * 2000 + b"\r\n")
        except smtplib.SMTPDataError as e:  # refused before the 354
            return e.smtp_code, e.smtp_error


@pytest_twisted.inlineCallbacks
def test_real_small_disk(small_filesystem: Path) -> Any:
    from twisted.internet import reactor, threads

    from tests.conftest import free_port
    from xrelay.config import Config, ListenerConfig, ServerConfig, DeliveryConfig
    from xrelay.diskspace import ReservingSpool
    from xrelay.inbound import InboundService

    port = free_port()
    reserve = 1024 * 1024
    cfg = Config(server=ServerConfig(
        listen=(ListenerConfig(f"tcp:{port}:interface=127.0.0.1"),),
        hostname="relay.test", state_dir=str(small_filesystem), min_free_space=reserve),
        accounts=(account(),), delivery=DeliveryConfig(first_retry=1))
    spool = Spool(str(small_filesystem / "spool"), reactor=reactor)
    transport = ScriptedTransport(script=[upstream] * 100)
    engine = DeliveryEngine(cfg, spool, {"main": transport}, reactor=reactor)
    inbound = InboundService(cfg, ReservingSpool(spool, lambda: reserve), engine,
                             reactor=reactor)
    engine.startService()
    inbound.startService()
    wait = lambda seconds: task.deferLater(reactor, seconds, lambda: None)  # noqa: E731

    def bounces() -> list[Any]:
        return [s for s in transport.sent if s.message.sender == RELAY_USER]
    try:
        yield inbound.when_listening()
        # Below the reserve: new mail is refused at MAIL, a bounce still fits.
        transport.hold = True
        transport.script = []
        code, _ = yield threads.deferToThread(send, port, "gone@example.org")
        assert code == 250
        filler = fill_until(small_filesystem, reserve // 2)
        # Far from the reserve, free space is measured at most every 100 ms
        # (xrelay.diskspace.MEASURE_EVERY): the next message comes after that.
        yield wait(MEASURE_EVERY * 1.5)
        code, text = yield threads.deferToThread(send, port, "a@example.org")
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
        transport.hold = False
        transport.script = [upstream] * 100
        transport.release(0, upstream)
        for _ in range(200):
            if bounces():
                break
            yield wait(0.05)
        assert len(bounces()) == 1
        assert [e.state for e in spool.entries()] == [FAILED]

        # Almost nothing free (the 8 KB, then less): five messages for the
        # unknown recipient fail while bounces and records barely fit or do not.
        # However it goes, no bounce storm and no lost bounce: after space returns,
        # each message is bounced exactly once.
        os.unlink(filler)
        transport.hold = True
        transport.script = []
        for _ in range(5):
            code, _ = yield threads.deferToThread(send, port, "gone@example.org")
            assert code == 250
        for _ in range(200):
            if len(transport.held) == 3:  # the account's max_connections
                break
            yield wait(0.05)
        filler = fill_until(small_filesystem, 8192)
        transport.hold = False
        transport.script = [upstream] * 200
        while transport.held:
            transport.release(0, upstream)
        yield wait(3)  # retries with the disk (nearly) full
        assert len(bounces()) <= 1 + 5, "a bounce storm"
        os.unlink(filler)
        for _ in range(400):
            if [e.state for e in spool.entries()] == [FAILED] * 6:
                break
            yield wait(0.05)
        assert [e.state for e in spool.entries()] == [FAILED] * 6
        yield wait(2.5)
        # Exactly one bounce each: the first message's and the five.
        assert sorted(b.message.entry_id for b in bounces()) == sorted(
            set(b.message.entry_id for b in bounces()))
        originals = {s.message.entry_id for s in transport.sent
                     if s.message.sender == SENDER}
        assert len(bounces()) == 6 and len(originals) == 6
    finally:
        yield inbound.stopService()
        yield engine.stopService()
        spool.close()  # its threads, and the spare files it holds open
