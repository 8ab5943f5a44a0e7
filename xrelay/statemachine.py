"""
The one state-machine mechanism of xrelay: a table of C{(state, event) -> next state}.

A thing with states (a spool entry, an account's token, an account's standing with its
provider) keeps its state as a plain value and changes it only through
L{StateTable.next}, which reads the table: the state is the table's output, never
something recomputed from flags beside it.  In automat's shape (inputs, a table, one
error for an input the table has no row for) without its class machinery, so that the
state stays an ordinary value a record can store and a test can enumerate.

Values and pure functions only: this module never logs, stores or looks at a clock.
"""

from __future__ import annotations

from typing import Generic, Hashable, Iterable, Iterator, Mapping, TypeVar

__all__ = ["NoTransition", "StateTable"]

S = TypeVar("S", bound=Hashable)


class NoTransition(ValueError):
    """
    An event that the table has no transition for in the current state: a programming
    error of the caller, or (for operator commands) a request the state does not allow.
    C{str()} names the machine, the state and the event.
    """

    def __init__(self, text: str, state: object = None, event: str = "") -> None:
        super().__init__(text)
        self.state = state
        self.event = event


class StateTable(Generic[S]):
    """
    The transitions of one kind of thing.

    @param name: what the states are of ("spool entry", "token"), for error messages.
    @param rows: C{(state, event, next state)} triples; a pair not listed has no
        transition.
    """

    def __init__(self, name: str, rows: Iterable[tuple[S, str, S]]) -> None:
        self.name = name
        self._next: dict[tuple[S, str], S] = {}
        for state, event, target in rows:
            if (state, event) in self._next and self._next[state, event] != target:
                raise ValueError(f"{name}: two transitions for {event} in {state}")
            self._next[state, event] = target

    def next(self, state: S, event: str, subject: str = "") -> S:
        """
        The state C{event} leads to from C{state}.

        @param subject: what is moving (an entry id, an account), for the message.
        @raise NoTransition: when the table has no such row.
        """
        try:
            return self._next[state, event]
        except KeyError:
            who = f"{subject}: " if subject else ""
            raise NoTransition(f"{who}no {self.name} transition {event!r} from "
                               f"{_shown(state)}", state, event) from None

    def allows(self, state: S, event: str) -> bool:
        return (state, event) in self._next

    def rows(self) -> Iterator[tuple[S, str, S]]:
        """Every transition, for tests and documentation."""
        for (state, event), target in self._next.items():
            yield state, event, target

    def events(self) -> frozenset[str]:
        return frozenset(event for _, event in self._next)

    def states(self) -> frozenset[S]:
        """Every state the table mentions, as a source or a target."""
        return frozenset(s for s, _ in self._next) | frozenset(self._next.values())

    def targets(self, state: S) -> frozenset[S]:
        """The states reachable from C{state} in one step."""
        return frozenset(t for (s, _), t in self._next.items() if s == state)

    def as_mapping(self) -> Mapping[tuple[S, str], S]:
        return dict(self._next)


def _shown(state: object) -> str:
    value = getattr(state, "value", state)
    return str(value)
