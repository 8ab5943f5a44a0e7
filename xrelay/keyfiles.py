"""
Writing a key or a certificate to a path someone else may be able to name: the one writer
shared by C{xrelay make-cert} (L{xrelay.operations.makecert}) and the sandbox's
certificate authority (L{xrelay.sandbox.ca}).

The file is written whole under a new, unpredictable name in the same folder, created
with C{O_CREAT|O_EXCL|O_NOFOLLOW} and its final mode before the first byte (a key is
never readable by others, not even for an instant), synced, and then renamed over the
path, or linked to it when an existing file must not be replaced.  A rename or a link
replaces or refuses the directory entry itself: a symlink planted at the path is never
followed (root running C{make-cert --force} in a folder a local user can write in used
to write and chmod through one).

This module must never follow a symlink at the path, never leave a partial file under
the final name, and never leave a key readable by others.
"""

from __future__ import annotations

import os
import secrets

from xrelay.durable import write_all

__all__ = ["write_new_file", "KEY_MODE", "CERTIFICATE_MODE"]

#: A private key: the owner only.
KEY_MODE = 0o600
#: A certificate (public): readable by the services that present it.
CERTIFICATE_MODE = 0o644


def write_new_file(path: str, data: bytes, mode: int, replace: bool = True) -> None:
    """
    Put C{data} at C{path} with C{mode}, atomically.

    @param replace: an existing entry at C{path} (a file, or a symlink, which is
        replaced, not followed) is replaced; when false, C{FileExistsError} is raised
        instead and nothing is written under the final name.
    """
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(8)}.tmp")
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    fd = os.open(temporary, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly this mode, whatever the umask
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(temporary, path)
        else:
            os.link(temporary, path)  # fails on any existing entry, a symlink too
            os.unlink(temporary)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
