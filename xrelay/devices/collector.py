"""
The device inventory's collector: what the inbound side tells it about each client,
gathered in memory and written to L{xrelay.devices.store.DeviceStore} in batches, off
the reactor thread.

The inbound protocol calls it at the points where it logs the same facts (a refusal,
an accepted message, an AUTH that worked or failed, a failed TLS handshake), passing
itself; the collector takes a L{Sighting} of it at once and keeps nothing of the
connection.  Every method returns at once and never raises into the caller: a bug here
costs an inventory row, never a reply to a device.  Changes are merged per device in
memory (so a busy printer is one row in a batch, not one per message) and written every
L{GATHER} seconds by one write at a time in a thread.

Bounded: at most C{limit} devices wait for a write (a flood of new addresses beyond that
is counted and dropped, with one log line per batch) and the file keeps at most
C{limit} devices (L{xrelay.devices.store}).

L{NullDevices} is what the inbound side has when the inventory is off
(C{relay.device_inventory = false}) or not wired in (tests, embedding programs).
"""

from __future__ import annotations

import functools
import sqlite3
import time
from typing import Any, Callable, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from xrelay.devices.records import STATES, Device, Sighting
from xrelay.devices.store import MAX_DEVICES, DeviceStore, devices_path
from xrelay.interfaces import IDeviceEvents

__all__ = ["DeviceCollector", "NullDevices", "sighting_of", "tls_version", "GATHER"]

log = Logger(namespace="xrelay.devices")

#: Seconds changes gather in memory before they are written.
GATHER = 1.0
#: Retention when the message history is off (delivery.history_days = 0).
DEFAULT_DAYS = 30

_TLS_NAMES = {"SSLv3": "SSL 3.0", "TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1",
              "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3"}

F = TypeVar("F", bound=Callable[..., None])


def tls_version(protocol: Any) -> str | None:
    """
    The TLS version of a session: "TLS 1.2", "none" without TLS, C{None} while a
    handshake has not completed.
    """
    if not protocol.tls:
        return "none"
    try:
        from OpenSSL import SSL

        connection = protocol.transport.getHandle()
        if not isinstance(connection, SSL.Connection):
            return None
        if connection.get_peer_finished() is None:
            return None
        name = connection.get_protocol_version_name()
    except Exception:
        return None
    return _TLS_NAMES.get(name, name)


def sighting_of(protocol: Any, user: str | None = None) -> Sighting:
    """
    A L{Sighting} of an L{xrelay.inbound.protocol.ESMTPServer} now (C{user}: the name
    to file it under instead of the authenticated user's).
    """
    if user is None:
        user = protocol.user.name if protocol.user is not None else ""
    address = protocol.client_address or getattr(protocol.transport.getPeer(), "host", "")
    return Sighting(address=address, user=user, helo=protocol.helo,
                    tls=tls_version(protocol), listener=protocol.factory.listener.endpoint)


def _never_raises(method: F) -> F:
    @functools.wraps(method)
    def guarded(self: "DeviceCollector", *args: Any, **kwargs: Any) -> None:
        try:
            if self.enabled():
                method(self, *args, **kwargs)
        except Exception:
            self.failures += 1
            if self.failures == 1:
                log.failure("device inventory: {event} failed; mail is not affected, "
                            "this device's row misses it (later failures are not logged)",
                            event=method.__name__)
    return guarded  # type: ignore[return-value]


@implementer(IDeviceEvents)
class NullDevices:
    """Keeps nothing: the inventory is off or not wired in."""

    counts: dict[str, int] = {}

    def refused(self, protocol: Any, stage: str, code: int, enhanced: str, text: str,
                sender: str | None = None) -> None:
        pass

    def accepted(self, protocol: Any, sender: str) -> None:
        pass

    def authenticated(self, protocol: Any, mechanism: str) -> None:
        pass

    def auth_failed(self, protocol: Any, name: str, mechanism: str, code: int,
                    enhanced: str, text: str) -> None:
        pass

    def tls_failed(self, protocol: Any, why: str) -> None:
        pass

    def flush(self) -> "Deferred[None]":
        return defer.succeed(None)


@implementer(IDeviceEvents)
class DeviceCollector(Service):
    """
    The relay's device inventory: events in, batched writes to C{state_dir}.

    @param config: returns the relay's current configuration (read at each event, so
        a reload that turns C{relay.device_inventory} off stops collecting at once).
    @param known_user: whether a name is a configured AUTH user: a failed AUTH with a
        known name is filed under that user (the same row as its later success), any
        other name under the address alone (a guesser cannot make a row per name).
    @ivar counts: devices per state after the last write (for the metrics).
    @ivar dropped: changes dropped because too many new devices waited for a write.
    """

    name = "devices"

    def __init__(self, config: Callable[[], Any], reactor: Any,
                 known_user: Callable[[str], bool] | None = None,
                 limit: int = MAX_DEVICES, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.reactor = reactor
        self.known_user = known_user or (lambda name: False)
        self.limit = limit
        self.clock = clock
        self.path = devices_path(config().server.state_dir)
        self.store = DeviceStore(self.path, self._warn, limit)
        self.pending: dict[tuple[str, str], Device] = {}
        self.counts: dict[str, int] = dict.fromkeys(STATES, 0)
        self.dropped = 0
        self.failures = 0
        self._timer: Any = None
        self._writing: Deferred[Any] | None = None
        self._waiting: list[Deferred[None]] = []

    def enabled(self) -> bool:
        return bool(self.running) and bool(self.config().relay.device_inventory)

    def _warn(self, text: str) -> None:
        self.reactor.callFromThread(log.warn, "{text}", text=text)

    # -- events from the inbound side ----------------------------------------------

    def _change(self, sighting: Sighting) -> Device | None:
        """The pending change for this device (with the sighting merged in), or None."""
        now = self.clock()
        change = Device.seen(sighting, now)
        existing = self.pending.get(change.key)
        if existing is None:
            if len(self.pending) >= self.limit:
                self.dropped += 1
                self._schedule(0)
                return None
            self.pending[change.key] = change
            self._schedule(GATHER)
            return change
        existing.merge(change)
        return existing

    @_never_raises
    def refused(self, protocol: Any, stage: str, code: int, enhanced: str, text: str,
                sender: str | None = None) -> None:
        """
        The device was refused at C{stage} ("connect", "mail", "rcpt", "data") with
        this reply.  A refusal at connection, MAIL or the end of DATA is a message
        refused; a refused recipient only updates the last refusal.
        """
        change = self._change(sighting_of(protocol))
        if change is None:
            return
        if stage != "rcpt":
            change.refused += 1
        if sender:
            change.senders = change.senders + [sender]
        change.refusal(self.clock(), stage, " ".join(str(p) for p in (code, enhanced, text)
                                                     if p))

    @_never_raises
    def accepted(self, protocol: Any, sender: str) -> None:
        """A message from the device was accepted (durable, answered 250)."""
        change = self._change(sighting_of(protocol))
        if change is None:
            return
        change.accepted += 1
        change.last_accepted = self.clock()
        change.senders = change.senders + [sender or "<>"]

    @_never_raises
    def authenticated(self, protocol: Any, mechanism: str) -> None:
        """The device authenticated (C{protocol.user} is set) with this mechanism."""
        change = self._change(attrs.evolve(sighting_of(protocol), mechanism=mechanism))
        if change is not None:
            change.mechanism = mechanism

    @_never_raises
    def auth_failed(self, protocol: Any, name: str, mechanism: str, code: int,
                    enhanced: str, text: str) -> None:
        """An AUTH with this user name (never the password) was refused."""
        name = name[:64]
        user = name if self.known_user(name) else ""
        change = self._change(sighting_of(protocol, user=user))
        if change is None:
            return
        change.auth_failures += 1
        change.auth_failed_user = name
        change.refusal(self.clock(), "auth", f"{code} {enhanced} {text} (user {name!r}, "
                       f"{mechanism})")

    @_never_raises
    def tls_failed(self, protocol: Any, why: str) -> None:
        """The device's TLS handshake failed, for this reason (in words)."""
        change = self._change(sighting_of(protocol))
        if change is None:
            return
        change.tls_failures += 1
        change.tls_failure = why
        change.refusal(self.clock(), "tls", f"TLS handshake failed: {why}")

    # -- writing ---------------------------------------------------------------------

    def _days(self) -> float:
        return float(self.config().delivery.history_days or DEFAULT_DAYS)

    def _schedule(self, delay: float) -> None:
        if self._writing is not None:
            return  # the write under way schedules the next one when it ends
        if self._timer is not None and self._timer.active():
            if delay > 0:
                return
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._write)

    def _write(self) -> "Deferred[None]":
        self._timer = None
        if self._writing is not None:
            return self._wait_for_write()
        batch, self.pending = list(self.pending.values()), {}
        dropped, self.dropped = self.dropped, 0
        if dropped:
            log.warn("device inventory: {count} changes dropped: more than {limit} new "
                     "devices within {seconds}s (a scan of the listener?)", count=dropped,
                     limit=self.limit, seconds=GATHER)
        d = deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.store.merge,
                              batch, self.clock(), self._days())
        self._writing = d

        def written(counts: dict[str, int]) -> None:
            if counts:
                self.counts = counts
            self._writing = None
            waiting, self._waiting = self._waiting, []
            if self.pending:
                self._schedule(GATHER if self.running else 0)
            for w in waiting:
                w.callback(None)

        def failed(failure: Any) -> None:
            log.failure("device inventory: a write failed", failure)
            written({})

        d.addCallbacks(written, failed)
        return self._wait_for_write()

    def _wait_for_write(self) -> "Deferred[None]":
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def flush(self) -> "Deferred[None]":
        """Fires once everything gathered so far is in the file."""
        if self._writing is not None:
            return self._wait_for_write().addCallback(lambda _: self.flush())
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
            self._timer = None
        return self._write()

    # -- life --------------------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self.store.warn = lambda text: log.warn("{text}", text=text)  # the reactor's thread
        try:
            self.store.open()
        except (OSError, sqlite3.Error) as e:
            # The relay starts anyway: the inventory is a convenience, never a reason
            # for mail to stop.  Each write tries the file again.
            log.warn("device inventory: cannot open {path} ({error}); mail is not "
                     "affected, the inventory tries again with each write",
                     path=self.path, error=str(e))
            self.store.close()
            self.store.failing = True
        else:
            self.counts = self.store.merge([], self.clock(), self._days()) or self.counts
        self.store.warn = self._warn

    def stopService(self) -> "Deferred[None]":
        Service.stopService(self)
        d = self.flush()

        def closed(result: Any) -> Any:
            self.store.close()
            return result

        return d.addBoth(closed)

