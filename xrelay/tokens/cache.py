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
from xrelay.statefiles import is_full, prepare_folder, regular_file_problem, set_aside

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
    path = os.path.join(keys, "cache.key")
    lost = ("token caches written with the old key cannot be read: accounts that signed "
            "in with a device code must sign in again (`xrelay login`); the others fetch "
            "a new token by themselves")
    if not prepare_folder(keys, "the token cache key is kept in memory only"):
        return _unsaved_key(path, None)
    problem = regular_file_problem(path)
    if problem is not None:
        set_aside(path, problem, lost)
    try:
        existing = _read_key(path)
    except OSError as e:
        set_aside(path, e.strerror or str(e), lost)
        existing = None
    if existing is not None:
        if not existing.strip():
            # Created but never written (a crash or a full disk between the two): no
            # cache can have been encrypted with it, so nothing is lost by a new one.
            log.warn("The token cache key {path} is empty, as an interrupted creation "
                     "leaves it; made a new one", path=path)
            _unlink(path)
        else:
            try:
                Fernet(existing.strip())
            except (ValueError, TypeError):
                set_aside(path, "not a key (32 bytes in URL-safe base64 expected)", lost)
            else:
                return existing.strip()
    key = Fernet.generate_key()
    try:
        write_durably(path, key + b"\n", exclusive=True)
        fsync_directory(keys)
    except FileExistsError:
        return load_key(state_dir)  # another process (xrelay login) made it just now
    except OSError as e:
        _unlink(path)  # never leave an empty or partial key behind
        return _unsaved_key(path, e)
    log.info("Created the token cache key {path}", path=path)
    return key


def _read_key(path: str) -> bytes | None:
    """The key file's bytes (mode made 0600 if it was looser); C{None}: no file."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode & 0o777
            if mode & 0o077:
                log.warn("The token cache key {path} was readable by others (mode "
                         "{mode:o}); made it 0600", path=path, mode=mode)
                os.fchmod(f.fileno(), 0o600)
            return f.read(4096)
    except FileNotFoundError:
        return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _unsaved_key(path: str, error: OSError | None) -> bytes:
    """A key for this run only, when none can be written (a full disk)."""
    log.error("The token cache key {path} cannot be written ({error}); tokens are cached "
              "with a key kept in memory, so after a restart accounts that signed in with "
              "a device code must sign in again; fix: {fix}", path=path,
              error=(error.strerror or str(error)) if error else "no folder for it",
              fix="free space in server.state_dir" if error is not None and is_full(error)
              else "make server.state_dir writable by the relay's user")
    return Fernet.generate_key()


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
        prepare_folder(folder, "tokens are kept in memory only")
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
        lost = ("its token is fetched again; an account that signed in with a device "
                "code must sign in again (`xrelay login`)")
        problem = regular_file_problem(self.path)
        if problem is not None:
            set_aside(self.path, problem, lost)
            self.signature = self._stat()
            return {}
        try:
            with open(self.path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            self.signature = None
            return {}
        except OSError as e:
            set_aside(self.path, e.strerror or str(e), lost)
            self.signature = self._stat()
            return {}
        self.signature = signature
        try:
            data = json.loads(self._fernet.decrypt(blob))
        except (InvalidToken, ValueError):
            data = None
        if not isinstance(data, dict):
            set_aside(self.path, "cannot be decrypted with the current key (was the key "
                      "changed?), or is not a token cache", lost)
            self.signature = self._stat()
            return {}
        return data

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
