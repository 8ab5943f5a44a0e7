"""The one durable-write helper the spool and the token cache share."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest

from xrelay import durable


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
    """
    Not two copies of the same code: the spool (a module or a package) and the token
    cache import the helpers of xrelay.durable and define no fsync or durable write of
    their own.  Read from the source, so that no private name is asserted.
    """
    root = Path(durable.__file__).parent
    users = {"spool": sorted(root.glob("spool.py")) + sorted(root.glob("spool/*.py")),
             "token cache": [root / "tokens" / "cache.py"]}
    for who, paths in users.items():
        imported: set[str] = set()
        own: list[str] = []
        for path in paths:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "xrelay.durable":
                    imported |= {a.name for a in node.names}
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                        "fsync_dir" in node.name or "write_durabl" in node.name):
                    own.append(f"{path.name}: {node.name}")
        assert {"write_durably", "fsync_directory"} <= imported, who
        assert not own, f"the {who} has its own: {own}"
