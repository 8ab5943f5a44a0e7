"""
The encrypted token cache: key handling, file modes, atomic replacement, and what happens
when the key no longer fits.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from twisted.logger import globalLogPublisher

from xrelay.tokens.cache import (KEY_ENVIRONMENT_VARIABLE, AccountCache, CacheKeyError,
                                 cache_file_name, load_key)


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_key_file_created_0600_and_reused(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENVIRONMENT_VARIABLE, raising=False)
    key = load_key(str(tmp_path))
    path = tmp_path / "keys" / "cache.key"
    assert mode(path) == 0o600
    assert mode(tmp_path / "keys") == 0o700
    assert path.read_bytes().strip() == key
    assert load_key(str(tmp_path)) == key


def test_key_file_made_private_if_loosened(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENVIRONMENT_VARIABLE, raising=False)
    load_key(str(tmp_path))
    path = tmp_path / "keys" / "cache.key"
    os.chmod(path, 0o644)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        load_key(str(tmp_path))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert mode(path) == 0o600
    assert any("readable by others" in e.get("log_format", "") for e in events)


def test_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key()
    monkeypatch.setenv(KEY_ENVIRONMENT_VARIABLE, key.decode())
    assert load_key(str(tmp_path)) == key
    assert not (tmp_path / "keys").exists()  # nothing written when the key is given


def test_bad_key_from_environment_is_named_not_shown(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENVIRONMENT_VARIABLE, "not-a-key-s3cr3t")
    with pytest.raises(CacheKeyError) as e:
        load_key(str(tmp_path))
    assert KEY_ENVIRONMENT_VARIABLE in str(e.value)
    assert "s3cr3t" not in str(e.value)


def test_file_is_encrypted_private_and_replaced_atomically(tmp_path: Path) -> None:
    key = Fernet.generate_key()
    cache = AccountCache.open(str(tmp_path), "main", key)
    assert cache.read() == {}
    cache.write({"refresh_token": "RT-plaintext-value"})
    path = tmp_path / "tokens" / "main.cache"
    assert mode(path) == 0o600
    assert mode(tmp_path / "tokens") == 0o700
    assert b"RT-plaintext-value" not in path.read_bytes()
    assert sorted(os.listdir(tmp_path / "tokens")) == ["main.cache"]  # no temporary left
    assert AccountCache.open(str(tmp_path), "main", key).read() == {
        "refresh_token": "RT-plaintext-value"}


def test_change_by_another_writer_is_noticed(tmp_path: Path) -> None:
    key = Fernet.generate_key()
    daemon = AccountCache.open(str(tmp_path), "main", key)
    daemon.write({"v": 1})
    assert not daemon.changed()
    login = AccountCache.open(str(tmp_path), "main", key)  # `xrelay login`, elsewhere
    login.write({"v": 2})
    assert daemon.changed()
    assert daemon.read() == {"v": 2}
    assert not daemon.changed()


def test_wrong_key_means_empty_cache_and_a_log_line(tmp_path: Path) -> None:
    AccountCache.open(str(tmp_path), "main", Fernet.generate_key()).write({"v": 1})
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert AccountCache.open(str(tmp_path), "main", Fernet.generate_key()).read() == {}
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    # One line naming the file; the file is set aside, so it is not read (nor logged)
    # again.
    (line,) = [formatEvent(e) for e in events if "cannot be decrypted" in formatEvent(e)]
    assert str(tmp_path / "tokens" / "main.cache") in line
    assert not (tmp_path / "tokens" / "main.cache").exists()
    assert list((tmp_path / "tokens").glob("main.cache.unreadable-*"))


def test_account_names_cannot_escape_the_folder() -> None:
    assert cache_file_name("main") == "main.cache"
    assert "/" not in cache_file_name("../../etc/passwd")
    assert cache_file_name("../x") != cache_file_name("..x")
