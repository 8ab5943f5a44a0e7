"""
Every state file besides the spool, damaged every way we could think of, and the real
relay started on it: it listens, delivers the mail queued before the start, and says
what it set aside in one line naming the file (never a traceback).

The kinds of damage: cut short (a crash, a full disk), the right syntax with the wrong
types, numbers no clock can show (C{inf 100000}, 1e300), a folder where a file belongs
(and a file where a folder belongs), an empty file, random bytes.  A wrong owner is
not tried: the tests run as root, whom no owner or mode keeps out (the install test
runs the relay as its service user).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Callable

import pytest
import pytest_twisted
from cryptography.fernet import Fernet

from tests.faults.conftest import World, assert_clean, loud_lines

GARBAGE = bytes(range(256)) * 4 + b"\x00\xff" * 100
KEY = Fernet.generate_key()

Damage = Callable[[Path], None]


def text(content: str | bytes) -> Damage:
    def damage(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        path.chmod(0o600)  # a loose mode is a warning of its own (not this suite's)
    return damage


def folder(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "something").write_text("not ours\n")


def encrypted(payload: bytes) -> Damage:
    """A token cache encrypted with the relay's own key (written beside it)."""
    def damage(path: Path) -> None:
        keys = path.parent.parent / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        (keys / "cache.key").write_bytes(KEY + b"\n")
        os.chmod(keys / "cache.key", 0o600)
        text(Fernet(KEY).encrypt(payload))(path)
    return damage


def sqlite_cut_short(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE message (entry_id TEXT PRIMARY KEY, x TEXT);"
                     + "".join(f"INSERT INTO message VALUES ('{i}', '{'x' * 500}');"
                               for i in range(200)))
    db.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


NOW = 1_800_000_000.0
JOURNAL = "accounts/sandbox.day"
HOLDS = "accounts/holds.json"
HISTORY = "history.sqlite"
CACHE = "tokens/sandbox.cache"
KEYFILE = "keys/cache.key"

#: (file under state_dir, kind, damage, whether a warning naming the file is due).
#: A journal line cut short and an empty journal or history are what a crash leaves:
#: read without a word.
CASES: list[tuple[str, str, Damage, bool]] = [
    (JOURNAL, "truncated", text("1765000000.123 1\n17650"), False),
    (JOURNAL, "wrong types", text("yesterday three\n"), True),
    (JOURNAL, "inf", text("inf 100000\n"), True),
    (JOURNAL, "huge", text("1e300 5\n"), True),
    (JOURNAL, "huge count", text("1765000000.000 99999999999999\n"), True),
    (JOURNAL, "folder", folder, True),
    (JOURNAL, "empty", text(""), False),
    (JOURNAL, "garbage", text(GARBAGE), True),
    (HOLDS, "truncated", text('{"sandbox": {"state": "upstream unrea'), True),
    (HOLDS, "wrong types", text('{"sandbox": {"state": "upstream unreachable", '
                                '"until": "tomorrow", "backoff": [1]}}'), True),
    (HOLDS, "not an object", text("[1, 2, 3]"), True),
    (HOLDS, "inf", text('{"sandbox": {"state": "upstream unreachable", '
                        '"until": Infinity, "backoff": 60}}'), True),
    (HOLDS, "huge", text('{"sandbox": {"state": "upstream unreachable", '
                         '"until": 1e300, "backoff": 1e300}}'), True),
    (HOLDS, "folder", folder, True),
    (HOLDS, "empty", text(""), True),
    (HOLDS, "garbage", text(GARBAGE), True),
    (HISTORY, "truncated", sqlite_cut_short, True),
    (HISTORY, "folder", folder, True),
    (HISTORY, "empty", text(""), False),
    (HISTORY, "garbage", text(GARBAGE), True),
    (CACHE, "truncated", lambda p: encrypted(b'{"msal": "x"}')(p) or
     p.write_bytes(p.read_bytes()[:40]), True),
    (CACHE, "wrong types", encrypted(b"[1, 2, 3]"), True),
    (CACHE, "folder", folder, True),
    (CACHE, "empty", text(""), True),
    (CACHE, "garbage", text(GARBAGE), True),
    (KEYFILE, "truncated", text(KEY[:20]), True),
    (KEYFILE, "folder", folder, True),
    (KEYFILE, "empty", text(""), True),
    (KEYFILE, "whitespace", text(" \n\n"), True),
    (KEYFILE, "garbage", text(GARBAGE), True),
    ("accounts", "a file, not a folder", text("not a folder\n"), True),
    ("tokens", "a file, not a folder", text("not a folder\n"), True),
    ("keys", "a file, not a folder", text("not a folder\n"), True),
]


@pytest.mark.parametrize("name, kind, damage, warned", CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
@pytest_twisted.inlineCallbacks
def test_damaged_state_file(world: World, name: str, kind: str, damage: Damage,
                            warned: bool) -> None:
    world.queue_mail(3)
    path = world.state / name
    damage(path)
    relay = world.start()
    yield world.listening(relay)
    subjects = yield world.delivered(3)
    assert sorted(subjects) == ["fault 0", "fault 1", "fault 2"]
    yield world.stop(relay)
    log = relay.log()
    assert_clean(log)
    lines = loud_lines(log, str(path))
    if warned:
        assert len(lines) == 1, f"{len(lines)} lines name {path}:\n{log}"
        # Set aside: renamed beside itself, so nothing reads it again.
        if "set aside as" in lines[0]:
            assert list(path.parent.glob(path.name + ".unreadable-*"))
    else:
        assert lines == [], log
