"""
Small files written so that they survive a crash: the spool's records and the token
cache (and its key) both need the same two steps, so they are written once, here.

This module never renames or removes anything: the caller decides what a durable file
becomes (C{rename} into place), and fsyncs the folder with L{fsync_directory} after.
"""

from __future__ import annotations

import os

__all__ = ["fsync_directory", "write_durably"]


def fsync_directory(path: str) -> None:
    """Make the names in a folder durable (a rename or a new file in it)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, payload: bytes) -> None:
    """Write every byte to C{fd}: C{os.write} may write fewer than it was given."""
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]


def write_durably(path: str, payload: bytes, exclusive: bool = False) -> None:
    """
    Write a whole small file with mode 0600 and fsync it (not its folder).

    @param exclusive: fail with C{FileExistsError} if the file exists (else it is
        truncated); the mode is set even on a file that existed with another.
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        write_all(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
