"""
A start on a completely full file system: the state folder on a small tmpfs that a
file (something else's: a log gone wild) has filled to the last byte.  The relay must
listen, deliver the mail that was queued, and say once per file what it could not
write; nothing it needs to start may need free space.

Mounting needs root: skipped with the reason otherwise.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import pytest_twisted

from tests.faults.conftest import World, assert_clean


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs",
                             str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> int:
    """Fill the file system to the last byte; returns the bytes written."""
    written = 0
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    written += f.write(b"\0" * size)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    return written


@pytest_twisted.inlineCallbacks
def test_start_on_a_full_disk_listens_and_drains_the_queue(world: World, small_disk: Path
                                                           ) -> None:
    world.state.mkdir(exist_ok=True)
    os.rmdir(world.state)
    world.state.symlink_to(small_disk)
    # A first run makes every state file (token cache and key, history, journal).
    world.write_config()
    world.queue_mail(1, tag="first run")
    relay = world.start()
    yield world.listening(relay)
    yield world.delivered(1)
    yield world.stop(relay)
    # Then mail waits in the spool while something else fills the disk.
    world.queue_mail(5, tag="full disk")
    assert fill(small_disk) > 0
    statvfs = os.statvfs(small_disk)
    assert statvfs.f_bavail == 0
    relay = world.start()
    yield world.listening(relay)
    subjects = yield world.delivered(6)
    assert sorted(subjects)[1:] == [f"full disk {n}" for n in range(5)]
    yield world.stop(relay)
    log = relay.log()
    assert_clean(log)
    running = log.split("Received SIGTERM", 1)[0]
    # Each file that could not be written is named once, not once per message.
    for name in ("sandbox.day", "history.sqlite", "sandbox.cache"):
        lines = [line for line in running.splitlines() if name in line and
                 ("#error]" in line or "#warn]" in line)]
        assert len(lines) <= 1, "\n".join(lines)
