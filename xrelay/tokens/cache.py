"""
The token cache on disk: one encrypted file per account under C{state_dir/tokens/}.

Each file holds msal's serialised token cache (or a Google refresh token) and a little
status (last refresh, last error), encrypted with Fernet (AES-128-CBC + HMAC-SHA256) under
a key from C{$XRELAY_CACHE_KEY} or from C{state_dir/keys/cache.key}, which is created with
mode 0600 on first use.  Files are replaced atomically (temporary file, fsync, rename,
fsync of the folder) with mode 0600, and a lock file serialises the daemon and a
concurrent C{xrelay login} process, which share these files.

This module must never write a token or the key in plaintext anywhere, nor put either into
a log line, an exception or a repr.  It is blocking file I/O: callers run it off the
reactor thread (the token thread pool) or in the C{xrelay} command.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from typing import Any, Iterator

import attrs
from cryptography.fernet import Fernet, InvalidToken
from twisted.logger import Logger

from xrelay.durable import fsync_directory, write_durably

KEY_ENVIRONMENT_VARIABLE = "XRELAY_CACHE_KEY"

log = Logger(namespace="xrelay.tokens.cache")


class CacheKeyError(Exception):
    """The configured cache key is not usable (the text never includes the key)."""


def load_key(state_dir: str) -> bytes:
    """
    The cache key: C{$XRELAY_CACHE_KEY} (a Fernet key, as printed by
    C{Fernet.generate_key()}) if set, else the key file, created on first use.
    """
    from_env = os.environ.get(KEY_ENVIRONMENT_VARIABLE)
    if from_env:
        key = from_env.strip().encode("ascii", "replace")
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise CacheKeyError(
                f"{KEY_ENVIRONMENT_VARIABLE} is not a valid key: it must be 32 bytes in "
                "URL-safe base64 (44 characters); generate one with `python -c \"from "
                "cryptography.fernet import Fernet; print(Fernet.generate_key().decode())\"`"
            ) from None
        return key
    keys = os.path.join(state_dir, "keys")
    os.makedirs(keys, mode=0o700, exist_ok=True)
    path = os.path.join(keys, "cache.key")
    key = Fernet.generate_key()
    try:
        write_durably(path, key + b"\n", exclusive=True)
    except FileExistsError:
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            log.warn("The token cache key {path} was readable by others (mode {mode:o}); "
                     "made it 0600", path=path, mode=mode)
            os.chmod(path, 0o600)
        with open(path, "rb") as f:
            key = f.read().strip()
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise CacheKeyError(f"{path} does not hold a valid key; remove it (and "
                                "sign in again) or restore it from a backup") from None
        return key
    fsync_directory(keys)
    log.info("Created the token cache key {path}", path=path)
    return key


def cache_file_name(account: str) -> str:
    """A file name for the account that cannot escape the folder."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,100}", account):
        return f"{account}.cache"
    return "x-" + account.encode("utf-8").hex()[:200] + ".cache"


Signature = tuple[int, int, int]


@attrs.define
class AccountCache:
    """
    One account's encrypted cache file.

    @ivar signature: (inode, size, mtime) of the file as last read or written here, to
        notice when another process (C{xrelay login}) replaced it.
    """

    path: str
    _fernet: Fernet = attrs.field(repr=False)
    signature: Signature | None = None
    #: Contents that could not be written (a full disk), and the file's signature at
    #: that moment: while the file stays as it was, they are what L{read} returns, so a
    #: new token is used from memory and written at the next chance.
    _unwritten: dict[str, Any] | None = attrs.field(default=None, repr=False)
    _unwritten_over: Signature | None = attrs.field(default=None, repr=False)

    @classmethod
    def open(cls, state_dir: str, account: str, key: bytes) -> AccountCache:
        folder = os.path.join(state_dir, "tokens")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        return cls(os.path.join(folder, cache_file_name(account)), Fernet(key))

    def _stat(self) -> Signature | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        """Whether the file differs from what this object last read or wrote."""
        return self._stat() != self.signature

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes, for read-modify-write."""
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self) -> dict[str, Any]:
        """
        The decrypted contents; C{{}} when there is no file or it cannot be decrypted
        (a lost or changed key means signing in again, never a crash).
        """
        signature = self._stat()
        if self._unwritten is not None:
            if signature == self._unwritten_over:
                self.signature = signature
                return json.loads(json.dumps(self._unwritten))  # a copy, like a read
            self._unwritten = None  # another process wrote the file since: it wins
        try:
            with open(self.path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            self.signature = None
            return {}
        self.signature = signature
        try:
            data = json.loads(self._fernet.decrypt(blob))
        except (InvalidToken, ValueError):
            log.error("The token cache {path} cannot be decrypted with the current key "
                      "(was the key changed?); ignoring it: sign in again",
                      path=self.path)
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, data: dict[str, Any]) -> bool:
        """
        Replace the file atomically: never a moment with a partial or open file.

        A file that cannot be written (a full disk, a read-only state_dir) does not
        lose the contents: they stay in memory (L{read} returns them), the failure is
        logged, and the next write tries again.  Returns whether the file was written.
        """
        blob = self._fernet.encrypt(json.dumps(data).encode("utf-8"))
        folder = os.path.dirname(self.path)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            write_durably(tmp, blob)
            os.replace(tmp, self.path)
            fsync_directory(folder)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            self._unwritten = json.loads(json.dumps(data))
            self._unwritten_over = self._stat()
            self.signature = self._unwritten_over
            log.error("The token cache {path} could not be written ({error}); the token "
                      "is used from memory and written at the next refresh; free space "
                      "in server.state_dir", path=self.path, error=e.strerror or str(e))
            return False
        self._unwritten = None
        self.signature = self._stat()
        return True
