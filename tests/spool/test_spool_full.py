"""
A full disk: the spool refuses with SpoolFull, removes every half-written byte, and
works again by itself once space returns.  On a real size-limited tmpfs when we may
mount one (root), and with an injected ENOSPC at fsync time everywhere.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
import pytest_twisted

from xrelay.envelope import Envelope
from xrelay.spool import Spool, SpoolFull, run_inline

ENVELOPE = Envelope(sender="scanner@example.com", recipients=("a@example.org",))


def _leftovers(spool: Spool) -> list[str]:
    found = []
    for sub in ("tmp", "data", "queued"):
        found += os.listdir(os.path.join(spool.directory, sub))
    return found


@pytest.fixture
def small_filesystem(tmp_path):
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                           str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_real_full_disk_and_recovery(small_filesystem) -> None:
    spool = Spool(str(small_filesystem / "spool"), run_blocking=run_inline)
    filler = small_filesystem / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * 900 * 1024)
        except OSError:
            pass
    message = spool.incoming(ENVELOPE)
    with pytest.raises(SpoolFull):
        for _ in range(1000):
            message.write(b"y" * 1022 + b"\r\n")  # 1 MB can never fit
    message.abort()
    assert _leftovers(spool) == []

    # Space returns (an operator cleans up): the same spool works again, untouched.
    os.unlink(filler)
    message = spool.incoming(ENVELOPE)
    message.write(b"Subject: after\r\n\r\nok\r\n")
    entry_id = message.commit().result
    assert spool.read_data(entry_id) == b"Subject: after\r\n\r\nok\r\n"


def test_full_disk_during_commit(tmp_path, monkeypatch) -> None:
    """ENOSPC surfacing at fsync (delayed allocation) fails the commit cleanly."""
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    message = spool.incoming(ENVELOPE)
    message.write(b"Subject: x\r\n\r\nbody\r\n")
    failure = message.commit()
    assert isinstance(failure.result.value, SpoolFull)
    failure.addErrback(lambda _: None)
    assert _leftovers(spool) == []

    monkeypatch.setattr(os, "fsync", real_fsync)
    message = spool.incoming(ENVELOPE)
    message.write(b"Subject: x\r\n\r\nbody\r\n")
    assert spool.get(message.commit().result).size == len(b"Subject: x\r\n\r\nbody\r\n")


def test_quota_when_creating(tmp_path, monkeypatch) -> None:
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    real_open = os.open

    def quota(path, flags, mode=0o777):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "open", quota)
    with pytest.raises(SpoolFull):
        spool.incoming(ENVELOPE)
    monkeypatch.setattr(os, "open", real_open)
    assert _leftovers(spool) == []


def _send(port: int, data: bytes) -> tuple[int, bytes]:
    """One message with smtplib; the final reply code and text."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        try:
            client.sendmail("scanner@example.com", ["a@example.org"], data)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error
        return 250, b""


def _wait_for_port(port: int) -> None:
    import socket
    import time

    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest_twisted.inlineCallbacks
def test_smtp_client_gets_452_and_relay_recovers(small_filesystem):
    """The whole inbound path on a full disk: 452 4.3.1, nothing left, then 250 again."""
    from twisted.internet import reactor, threads

    from tests.conftest import free_port
    from tests.delivery.delivery_harness import account
    from xrelay.config import Config, ListenerConfig, ServerConfig
    from xrelay.delivery import DeliveryEngine
    from xrelay.delivery.testing import ScriptedTransport
    from xrelay.inbound import InboundService

    port = free_port()
    config = Config(server=ServerConfig(
        listen=(ListenerConfig(f"tcp:{port}:interface=127.0.0.1"),),
        hostname="relay.test", state_dir=str(small_filesystem)), accounts=(account(),))
    spool = Spool(str(small_filesystem / "spool"), reactor=reactor)
    transport = ScriptedTransport()
    engine = DeliveryEngine(config, spool, {"main": transport}, reactor=reactor)
    inbound = InboundService(config, spool, engine, reactor=reactor)
    engine.startService()
    inbound.startService()
    try:
        yield threads.deferToThread(_wait_for_port, port)
        filler = small_filesystem / "filler"
        with open(filler, "wb") as f:
            try:
                f.write(b"\0" * 1024 * 1024)
            except OSError:
                pass
        # Date: and Message-ID: given, so that the relay adds nothing (RFC 6409 8).
        big = (b"Subject: big scan\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
               b"Message-ID: <big@scanner>\r\n\r\n" + (b"z" * 998 + b"\r\n") * 600)
        code, text = yield threads.deferToThread(_send, port, big)
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
        assert _leftovers(spool) == []
        assert transport.sent == []

        os.unlink(filler)  # space returns; nobody restarts anything
        code, _ = yield threads.deferToThread(_send, port, big)
        assert code == 250
        for _ in range(100):
            if transport.sent:
                break
            yield threads.deferToThread(lambda: __import__("time").sleep(0.05))
        assert transport.sent[0].data.endswith(big)
    finally:
        yield inbound.stopService()
        yield engine.stopService()
        spool.close()  # its threads, and the spare files it holds open
