"""The one durable-write helper the spool and the token cache share."""

from __future__ import annotations

import os
import stat

import pytest

from xrelay import durable
from xrelay.spool import commit, incoming, spares, store
from xrelay.tokens import cache


def test_write_durably_writes_the_whole_file_private_and_synced(
        tmp_path: "os.PathLike[str]", monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    synced: list[int] = []
    real_fsync = os.fsync
    here = threading.current_thread()
    # This thread's fsyncs only: spools of other tests may still sync in their threads.
    monkeypatch.setattr(os, "fsync", lambda fd: (
        synced.append(fd) if threading.current_thread() is here else None,
        real_fsync(fd)))
    path = os.path.join(tmp_path, "record.json")
    with open(path, "wb") as f:
        f.write(b"an older, longer content that must go entirely")
    os.chmod(path, 0o644)
    durable.write_durably(path, b"x" * 300_000)
    with open(path, "rb") as f:
        assert f.read() == b"x" * 300_000
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(synced) == 1


def test_exclusive_refuses_an_existing_file(tmp_path: "os.PathLike[str]") -> None:
    path = os.path.join(tmp_path, "cache.key")
    durable.write_durably(path, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        durable.write_durably(path, b"second", exclusive=True)
    with open(path, "rb") as f:
        assert f.read() == b"first"


def test_fsync_directory_refuses_a_file(tmp_path: "os.PathLike[str]") -> None:
    durable.fsync_directory(str(tmp_path))
    path = os.path.join(tmp_path, "f")
    open(path, "w").close()
    with pytest.raises(NotADirectoryError):
        durable.fsync_directory(path)


def test_spool_and_token_cache_use_the_shared_helpers() -> None:
    # Not two copies of the same code: both modules call the one in xrelay.durable.
    assert store.write_durably is durable.write_durably
    assert incoming.write_durably is durable.write_durably
    for module in (store, commit, spares):
        assert module.fsync_directory is durable.fsync_directory
    assert cache.write_durably is durable.write_durably
    assert cache.fsync_directory is durable.fsync_directory
    assert not hasattr(cache, "_fsync_dir")
