"""
What the spool's job modules (commit, incoming, recovery) read and call on the L{Spool}
that owns them (L{xrelay.spool.store}, which imports each of them): named here, below
all of them, so that none imports the store back.

A typing seam only: it must never hold code.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred

from xrelay.records import SpoolEntry

__all__ = ["SpoolHost"]


class _SpareRoom(Protocol):
    def room_again(self) -> None: ...


class _CommitQueue(Protocol):
    def enqueue(self, message: Any) -> "Deferred[str]": ...


class SpoolHost(Protocol):
    """The store's folders and the private steps its job modules share with it."""

    directory: str
    _recovered: dict[str, list[SpoolEntry]]
    _unlisted: set[str]

    @property
    def _spares(self) -> _SpareRoom: ...

    @property
    def _committer(self) -> _CommitQueue: ...

    def _data_path(self, entry_id: str) -> str: ...

    def _json_path(self, state: str, entry_id: str) -> str: ...

    def _out_of_space(self) -> None: ...

    def _hand_over(self, entry: SpoolEntry) -> None: ...

    def _read_record(self, state: str, entry_id: str,
                     data_sizes: dict[str, int] | None = None,
                     data_names: set[str] | None = None
                     ) -> tuple[SpoolEntry, dict[str, int]]: ...
