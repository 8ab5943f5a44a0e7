"""
The message trace: what happened to each message the relay accepted ("did it send?").

The stages report to an L{xrelay.interfaces.IMessageHistory} sink; the relay's sink is
L{SqliteHistory}, an SQLite database under C{state_dir} written by one thread of its
own, so that the history is never in the path of a 250.  L{search} and L{story} read it
(read-only, while the daemon runs or not) for C{xrelay trace} and the admin page.

Public API: L{open_history}, L{history_for}, L{NullHistory}, L{SqliteHistory},
L{AcceptedMessage}, L{TraceQuery}, L{search}, L{story}, L{history_path}.
"""

from xrelay.history.query import (HistoryMissing, MessageStory, MessageTrace, TraceQuery,
                                  parse_since, search, story)
from xrelay.history.records import (BOUNCED, DELETED, DELIVERED, EXPIRED, HANDED_BACK,
                                    WAITING, AcceptedMessage)
from xrelay.history.sink import (NullHistory, SqliteHistory, history_for, history_path,
                                 open_history)

__all__ = ["AcceptedMessage", "BOUNCED", "DELETED", "DELIVERED", "EXPIRED", "HANDED_BACK",
           "HistoryMissing", "MessageStory", "MessageTrace", "NullHistory",
           "SqliteHistory", "TraceQuery", "WAITING", "history_for", "history_path",
           "open_history", "parse_since", "search", "story"]
