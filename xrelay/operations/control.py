"""
The control channel between the C{xrelay} command and the running daemon, and the spool
lock that makes the two never change the queue at the same time.

The daemon (L{ControlService}) holds an exclusive C{flock} on C{state_dir/spool.lock}
for its whole life and serves a UNIX socket, C{state_dir/control.sock}, mode 0600 in a
0700 folder, so only the relay's own user (and root) can use it.  The command first
tries the socket: if the daemon answers, the daemon does the work (it knows what is in
flight).  If nobody answers, the command takes the same lock itself
(L{SpoolLock}) and works on the spool directly; if the lock is held, a daemon is
running but not answering, and the command says so rather than racing it.

The protocol is one JSON object per line: a request C{{"op": ..., "args": {...}}}, then
zero or more C{{"event": ...}} lines, then C{{"ok": true, "result": ...}} or
C{{"ok": false, "error": "..."}}.  JSON lines rather than AMP: answers such as a long
queue listing exceed AMP's 64 KiB value limit, and the command side stays a plain
blocking socket with no reactor.

Nothing sent over the channel contains a secret; errors are operator text, never
tracebacks.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import Any, Awaitable, Callable, Iterator

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from xrelay.operations.errors import ControlRefusal
from xrelay.operations.queue import (QueueOperations, QueueProblem, describe_entry,
                                     entry_rows)

__all__ = [
    "ControlService",
    "ControlClient",
    "DaemonNotRunning",
    "SpoolLock",
    "SpoolLocked",
    "control_socket_path",
    "spool_lock_path",
]

log = Logger(namespace="xrelay.operations.control")

#: Longest request line accepted by the daemon.
MAX_REQUEST = 64 * 1024


def control_socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, "control.sock")


def spool_lock_path(state_dir: str) -> str:
    return os.path.join(state_dir, "spool.lock")


class SpoolLocked(Exception):
    """Another process (normally the daemon) holds the spool lock."""


class DaemonNotRunning(Exception):
    """Nothing answers on the control socket."""


class SpoolLock:
    """
    An exclusive C{flock} on C{state_dir/spool.lock}.  The kernel releases it when the
    holder dies, so a crashed daemon never leaves a stale lock behind.
    """

    def __init__(self, state_dir: str) -> None:
        self.path = spool_lock_path(state_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        """@raise SpoolLocked: when another process holds it (never waits)."""
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise SpoolLocked(self.path) from None
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "SpoolLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


# -- the daemon side ---------------------------------------------------------------


class _ControlProtocol(LineReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST

    def __init__(self, handlers: "ControlHandlers") -> None:
        self.handlers = handlers
        self.busy = False

    def lineReceived(self, line: bytes) -> None:
        if self.busy:
            self._send({"ok": False, "error": "one request at a time"})
            return
        try:
            request = json.loads(line)
            op = request["op"]
            args = request.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise ValueError(op)
        except (ValueError, KeyError, TypeError):
            log.warn("control: malformed request refused")
            self._send({"ok": False, "error": "malformed request"})
            return
        self.busy = True
        d = defer.ensureDeferred(self.handlers.handle(op, args, self._event))
        d.addCallbacks(lambda result: self._send({"ok": True, "result": result}),
                       self._failed, errbackArgs=(op,))
        d.addBoth(self._done)

    def _failed(self, failure: Any, op: str) -> None:
        if failure.check(QueueProblem, ControlRefusal):
            self._send({"ok": False, "error": str(failure.value)})
            return
        log.failure("control: {op} failed", failure=failure, op=op)
        self._send({"ok": False, "error": f"{op} failed inside the daemon; see its log"})

    def _done(self, _: Any) -> None:
        self.busy = False

    def _event(self, event: dict[str, Any]) -> None:
        self._send({"event": event})

    def _send(self, message: dict[str, Any]) -> None:
        if self.transport is not None:
            self.transport.write(json.dumps(message).encode("utf-8") + b"\n")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._send({"ok": False, "error": "request too long"})
        if self.transport is not None:
            self.transport.loseConnection()


class ControlHandlers:
    """
    What the daemon does for each request.  Kept apart from the protocol so that the
    admin page and tests can call it too.
    """

    def __init__(self, relay: Any) -> None:
        self.relay = relay

    def queue(self) -> QueueOperations:
        return QueueOperations(self.relay.spool, self.relay.config, self.relay.delivery)

    async def handle(self, op: str, args: dict[str, Any],
                     event: Callable[[dict[str, Any]], None]) -> Any:
        handler: Callable[..., Awaitable[Any]] | None = getattr(
            self, "op_" + op.replace("-", "_").replace(".", "_"), None)
        if handler is None:
            raise ControlRefusal(f"unknown request {op!r}")
        return await handler(event=event, **_plain(args))

    async def op_ping(self, event: Any) -> dict[str, Any]:
        return {"pid": os.getpid(), "config": self.relay.config.path}

    async def op_accounts(self, event: Any) -> list[dict[str, Any]]:
        import time

        from xrelay.tokens.expiry import expiry_warnings

        statuses = self.relay.tokens.status()
        held = self.relay.delivery.status().accounts  # provider state, daily budget
        result = [dict(_status_json(statuses[a.name], a),
                       **(held[a.name].as_json() if a.name in held else {}))
                  for a in self.relay.config.accounts if a.name in statuses]
        warnings: dict[str, list[str]] = {}
        for e in self.relay.tokens.expiries():
            if e.scope == "account":
                warnings.setdefault(e.owner, []).extend(expiry_warnings([e], time.time()))
        for item in result:
            item["expiry_warnings"] = warnings.get(item["account"], [])
        return result

    async def op_health(self, event: Any) -> dict[str, Any]:
        from xrelay.operations.health import health_report

        return health_report(self.relay)

    async def op_queue_list(self, event: Any, state: str | None = None,
                            fields: list[str] | None = None) -> Any:
        """
        Every entry described (or, with C{fields}, C{{"fields": [...], "rows": [...]}}
        with just those: what the command prints).  From memory where the spool
        remembers (ListedSpool), else read; in a thread either way: 40,000 records
        read on the reactor stopped every SMTP session for 2.6 s.
        """
        spool = self.relay.spool
        listing = getattr(spool, "listing", None)

        def answer() -> Any:
            entries = listing(state) if listing is not None else \
                list(self.queue().entries(state))
            if fields:
                return {"fields": list(fields), "rows": entry_rows(entries, list(fields))}
            return [describe_entry(e) for e in entries]

        reactor = getattr(self.relay, "reactor", None)
        if reactor is None or not hasattr(reactor, "getThreadPool"):
            return answer()
        return await deferToThreadPool(reactor, reactor.getThreadPool(), answer)

    async def op_queue_show(self, event: Any, id: str) -> dict[str, Any]:
        q = self.queue()
        result = describe_entry(q.get(id))
        result["headers"] = q.headers(id)
        return result

    async def op_queue_retry(self, event: Any, id: str) -> dict[str, Any]:
        q = self.queue()
        entry = await q.retry(id)
        log.info("{entry_id}: retry asked by the operator", entry_id=id)
        return dict(describe_entry(entry), notes=q.notes)

    async def op_queue_retry_all(self, event: Any) -> dict[str, Any]:
        q = self.queue()
        count = await q.retry_all()
        log.info("retry of {count} entries asked by the operator", count=count)
        return {"count": count, "notes": q.notes}

    async def op_queue_delete(self, event: Any, id: str) -> dict[str, Any]:
        entry = await self.queue().delete(id)
        log.info("{entry_id} from <{sender}> deleted by the operator ({recipient_count} "
                 "recipients not delivered)", entry_id=id, sender=entry.sender,
                 recipient_count=len(entry.recipients))
        return describe_entry(entry)

    async def op_queue_bounce(self, event: Any, id: str) -> dict[str, Any]:
        entry = await self.queue().bounce(id)
        log.info("{entry_id} from <{sender}> bounced by the operator", entry_id=id,
                 sender=entry.sender)
        return describe_entry(entry)

    async def op_devices_flush(self, event: Any) -> bool:
        """Write what the device inventory gathered, so `xrelay devices` reads it all."""
        if self.relay.devices is not None:
            await self.relay.devices.flush()
        return True

    async def op_reload(self, event: Any) -> dict[str, Any]:
        if not self.relay.reload():
            raise ControlRefusal("configuration not reloaded; the daemon's log says why "
                                 "(the old configuration stays in force)")
        return {"reloaded": True, "notes": list(getattr(self.relay.delivery, "lifted", []))}

    async def op_send_test(self, event: Any, to: str, account: str | None = None
                           ) -> dict[str, Any]:
        from xrelay.operations.testmessage import send_test_message

        return await send_test_message(self.relay, to, account)


def _plain(args: dict[str, Any]) -> dict[str, Any]:
    """Only simple keyword arguments pass (no dunder names, no nested objects)."""
    result = {}
    for key, value in args.items():
        if not key.isidentifier() or key.startswith("_") or key == "event":
            raise ControlRefusal(f"bad argument {key!r}")
        if isinstance(value, list) and len(value) <= 32 and all(
                isinstance(item, str) for item in value):
            pass  # a short list of names (the fields of a listing)
        elif not isinstance(value, (str, int, float, bool, type(None))):
            raise ControlRefusal(f"bad value for {key!r}")
        result[key] = value
    return result


def _status_json(status: Any, account: Any) -> dict[str, Any]:
    return {
        "account": status.account,
        "state": status.state,
        "provider": account.provider,
        "flow": account.flow,
        "user": account.user,
        "expires_at": status.expires_at,
        "last_refresh": status.last_refresh,
        "last_error": status.last_error,
        "hint": status.hint,
        "failing_since": getattr(status, "failing_since", None),
    }


class ControlService(Service):
    """
    The daemon's end: holds the spool lock and serves the control socket while running.

    @param relay: the L{xrelay.service.RelayService} (its C{config}, C{spool},
        C{delivery}, C{tokens}, C{reload}).
    """

    name = "control"

    def __init__(self, relay: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.relay = relay
        self.reactor = reactor
        self.handlers = ControlHandlers(relay)
        self._lock: SpoolLock | None = None
        self._port: Any = None

    @property
    def state_dir(self) -> str:
        return str(self.relay.config.server.state_dir)

    def startService(self) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        lock = SpoolLock(self.state_dir)
        try:
            lock.acquire()
        except SpoolLocked:
            from xrelay.startup import StartupRefused

            raise StartupRefused(
                f"xrelay: another xrelay process holds {lock.path}; two daemons must "
                "not share one state_dir: stop the other one, or give this one its own "
                "server.state_dir") from None
        self._lock = lock
        path = control_socket_path(self.state_dir)
        try:
            os.unlink(path)  # left by a crash; we hold the lock, so nobody serves it
        except FileNotFoundError:
            pass
        factory = Factory.forProtocol(lambda: _ControlProtocol(self.handlers))
        factory.noisy = False
        old = os.umask(0o177)
        try:
            self._port = self.reactor.listenUNIX(path, factory, mode=0o600, wantPID=False)
        finally:
            os.umask(old)
        Service.startService(self)
        log.info("control channel on {path}", path=path)

    def stopService(self) -> "defer.Deferred[None]":
        Service.stopService(self)
        port, self._port = self._port, None
        d = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)

        def release(_: Any) -> None:
            try:
                os.unlink(control_socket_path(self.state_dir))
            except FileNotFoundError:
                pass
            if self._lock is not None:
                self._lock.release()
                self._lock = None
        return d.addBoth(release)


# -- the command side ----------------------------------------------------------------


class ControlClient:
    """
    Blocking client for the C{xrelay} command: one request per connection.
    """

    def __init__(self, state_dir: str, timeout: float = 30.0) -> None:
        self.path = control_socket_path(state_dir)
        self.timeout = timeout

    def request(self, op: str, on_event: Callable[[dict[str, Any]], None] | None = None,
                timeout: float | None = None, **args: Any) -> Any:
        """
        @raise DaemonNotRunning: nobody answers on the socket.
        @raise ControlRefusal: the daemon refused, with its reason.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout or self.timeout)
        try:
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError):
                raise DaemonNotRunning(self.path) from None
            except PermissionError:
                raise ControlRefusal(f"no permission to use {self.path}; run the "
                                     "command as the relay's user or root") from None
            sock.sendall(json.dumps({"op": op, "args": args}).encode("utf-8") + b"\n")
            for message in _lines(sock):
                if "event" in message:
                    if on_event is not None:
                        on_event(message["event"])
                    continue
                if message.get("ok"):
                    return message.get("result")
                raise ControlRefusal(str(message.get("error", "refused")))
            raise ControlRefusal("the daemon closed the connection without answering")
        except socket.timeout:
            raise ControlRefusal("the daemon did not answer in time") from None
        finally:
            sock.close()


def _lines(sock: socket.socket) -> Iterator[dict[str, Any]]:
    """
    The JSON lines of an answer.  A long queue listing is one line of many megabytes:
    chunks are collected and joined once per line (growing one bytes object chunk by
    chunk, and searching all of it for the newline each time, was quadratic).
    """
    pending: list[bytes] = []
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        while True:
            end = chunk.find(b"\n")
            if end < 0:
                pending.append(chunk)
                break
            pending.append(chunk[:end])
            line, pending, chunk = b"".join(pending), [], chunk[end + 1:]
            if line.strip():
                yield json.loads(line)


def wait_for_socket(state_dir: str, timeout: float = 30.0) -> None:
    """For scripts and tests: wait until the daemon answers a ping."""
    deadline = time.monotonic() + timeout
    client = ControlClient(state_dir, timeout=5)
    while True:
        try:
            client.request("ping")
            return
        except DaemonNotRunning:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
