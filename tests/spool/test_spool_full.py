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
