"""
The SMTP transport of one account: a small pool of authenticated upstream connections,
reused across messages (RSET between them), bounded by C{max_connections}, replaced after
C{messages_per_connection}, closed after C{idle_timeout}; and the token handling around
AUTH (a rejected token is refreshed once, on a fresh connection, before deferring).

This is where upstream trouble becomes a L{DeliveryResult}: L{SMTPTransport.deliver}
never fails its Deferred for anything the network or the upstream can do.  It must never
log a token or put one into a result.
"""

from __future__ import annotations

import functools
import socket
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from xrelay.config import AccountConfig
from xrelay.envelope import DeliveryResult, FailureKind, OutboundMessage, Outcome, Reply
from xrelay.interfaces import ITokenSource, ITransport
from xrelay.replies import recognise
from xrelay.tokens.errors import NeedsSignIn, TokenUnavailable
from xrelay.transport.classify import (
    authentication_detail,
    failure_of,
    is_send_as_denied,
    send_as_detail,
)
from xrelay.transport.trouble import ConnectionTrouble, StaleConnection, UpstreamRefused
from xrelay.transport.smtp import (
    Timeouts,
    UpstreamConnection,
    open_connection,
)
from xrelay.transport.tls import client_tls

log = Logger()


class _AttemptFailed(Exception):
    """The attempt failed before a transaction could start: same result for everyone."""

    def __init__(self, reply: Reply, failure: FailureKind, detail: str = "",
                 outcome: Outcome = Outcome.TEMPORARY,
                 retry_after: float | None = None) -> None:
        super().__init__(reply, failure)
        self.retry_after = retry_after
        self.reply = reply
        self.failure = failure
        self.detail = detail
        self.outcome = outcome


def token_failure_kind(error: BaseException) -> FailureKind:
    """
    L{FailureKind.NEEDS_SIGN_IN} for L{NeedsSignIn} (an operator must act; never a
    bounce), L{FailureKind.CONNECTION} for L{TokenUnavailable} or anything else.
    """
    if isinstance(error, NeedsSignIn):
        return FailureKind.NEEDS_SIGN_IN
    return FailureKind.CONNECTION


def token_failure(error: BaseException, account: str, now: float) -> "_AttemptFailed":
    """The result of not getting a token: deferred, with the token service's words."""
    kind = token_failure_kind(error)
    text = f"4.7.0 {error}" if isinstance(error, (NeedsSignIn, TokenUnavailable)) else (
        f"4.7.0 No access token for account {account}: {error}")
    retry_at = getattr(error, "retry_at", None)
    retry_after = max(0.0, retry_at - now) if isinstance(retry_at, (int, float)) else None
    return _AttemptFailed(Reply(451, text), kind, text[6:], retry_after=retry_after)


def trouble_reply(where: str, trouble: ConnectionTrouble) -> Reply:
    """The reply reported when there is no upstream reply to report."""
    return Reply(451, f"4.4.2 Upstream {where}: {trouble}")


@implementer(ITransport)
@attrs.define(eq=False)
class SMTPTransport:
    """
    Delivers through one account over SMTP with XOAUTH2.

    @ivar helo_name: the name sent in EHLO.
    """

    account: AccountConfig
    tokens: ITokenSource
    reactor: Any
    helo_name: str = attrs.field(factory=socket.gethostname)
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    #: Runs the idle timers; the reactor unless a test passes a C{task.Clock}.
    clock: Any = None
    _idle: list[tuple[UpstreamConnection, Any]] = attrs.field(factory=list)
    _slots: DeferredSemaphore = attrs.field(init=False)
    _open: set[UpstreamConnection] = attrs.field(factory=set)
    _closed: bool = False
    #: Built once: loading the trust roots costs more than the rest of a connection.
    _tls: Any = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        self._slots = DeferredSemaphore(max(1, self.account.max_connections))
        if self.clock is None:
            self.clock = self.reactor

    @property
    def where(self) -> str:
        return f"{self.account.smtp_host}:{self.account.smtp_port}"

    # -- ITransport ------------------------------------------------------------------

    def deliver(self, message: OutboundMessage) -> Deferred[DeliveryResult]:
        return self._slots.run(lambda: ensureDeferred(self._deliver(message)))

    def close(self) -> Deferred[None]:
        """Close every idle connection; busy ones are closed when their message is done."""
        self._closed = True
        idle, self._idle = self._idle, []
        waits = []
        for connection, timer in idle:
            if timer.active():
                timer.cancel()
            waits.append(ensureDeferred(connection.quit()))
        return DeferredList(waits).addCallback(lambda _: None)

    # -- one delivery ----------------------------------------------------------------

    async def _deliver(self, message: OutboundMessage) -> DeliveryResult:
        fields: dict[str, Any] = dict(
            message_id=message.entry_id, account=self.account.name, sender=message.sender
        )
        try:
            while True:
                connection, reused = await self._checkout()
                try:
                    # RSET only after a transaction that did not end in a 250 to
                    # its end of data (RFC 5321 4.1.1.4 makes it redundant then).
                    result = await connection.send_message(
                        message, reset=reused and not connection.clean, reused=reused)
                except StaleConnection:
                    # Closed while idle: nothing was sent that could deliver; try the
                    # next idle connection or a new one.
                    connection.protocol.abort()
                    self._discard(connection)
                    continue
                except ConnectionTrouble as trouble:
                    reply = trouble_reply(self.where, trouble)
                    result = DeliveryResult.for_all(
                        message.recipients, Outcome.TEMPORARY, reply,
                        FailureKind.CONNECTION, str(reply),
                    )
                break
            self._checkin(connection)
        except _AttemptFailed as failed:
            result = DeliveryResult.for_all(
                message.recipients, failed.outcome, failed.reply, failed.failure,
                failed.detail, failed.retry_after,
            )
        except Exception:
            # A bug, not an upstream condition: keep the message and say so.
            log.failure("Unexpected error delivering {message_id}", **fields)
            reply = Reply(451, "4.3.0 Internal error in xrelay's SMTP transport")
            return DeliveryResult.for_all(message.recipients, Outcome.TEMPORARY, reply)
        if result.failure is FailureKind.SEND_AS_DENIED or any(
            is_send_as_denied(r.reply) for r in result.recipients
        ):
            result = attrs.evolve(
                result,
                failure=FailureKind.SEND_AS_DENIED,
                detail=send_as_detail(self.account.user, message.sender,
                                      self.account.name),
            )
        for r in result.recipients:
            log.info(
                "Upstream {account} {outcome} {message_id} from <{sender}> to "
                "<{recipient}>: {upstream_reply}",
                recipient=r.recipient, outcome=r.outcome.value,
                upstream_reply=str(r.reply), failure=result.failure.value, **fields,
            )
        return result

    async def _checkout(self) -> tuple[UpstreamConnection, bool]:
        """
        An idle connection (C{True}: reused, so the transaction begins with RSET, which
        proves it still works), or a new authenticated one (C{False}).
        """
        while self._idle:
            connection, timer = self._idle.pop()
            if timer.active():
                timer.cancel()
            if connection.open:
                return connection, True
            self._discard(connection)
        return await self._connect(), False

    def _checkin(self, connection: UpstreamConnection) -> None:
        """Keep a healthy connection for the next message, or let it go."""
        if (
            self._closed
            or not connection.open
            or connection.messages_sent >= self.account.messages_per_connection
        ):
            ensureDeferred(connection.quit())
            self._discard(connection)
            return
        timer = self.clock.callLater(self.account.idle_timeout, self._expire, connection)
        self._idle.append((connection, timer))

    def _expire(self, connection: UpstreamConnection) -> None:
        self._idle = [(c, t) for c, t in self._idle if c is not connection]
        ensureDeferred(connection.quit())
        self._discard(connection)

    def _discard(self, connection: UpstreamConnection) -> None:
        self._open.discard(connection)

    def _lost(self, connection: UpstreamConnection) -> None:
        """An idle connection closed by the upstream (its idle timeout, a 421)."""
        for c, timer in self._idle:
            if c is connection and timer.active():
                timer.cancel()
        self._idle = [(c, t) for c, t in self._idle if c is not connection]
        self._open.discard(connection)

    async def _connect(self) -> UpstreamConnection:
        """
        Token, connection, AUTH.  A token refused with 5xx is reported to the token
        source and the whole thing done once more with a fresh token on a fresh
        connection; a second refusal defers the message (L{FailureKind.AUTHENTICATION}).
        """
        for attempt in (1, 2):
            token = await self._token()
            connection = await self._secure_connection()
            try:
                reply = await connection.authenticate(self.account.user, token)
            except ConnectionTrouble as trouble:
                raise _AttemptFailed(
                    trouble_reply(self.where, trouble), FailureKind.CONNECTION,
                    str(trouble),
                ) from None
            if reply.code == 235:
                connection.protocol.on_lost = functools.partial(self._lost, connection)
                self._open.add(connection)
                return connection
            await connection.quit()
            if reply.code != 535:
                # Not a verdict on the token (454 temporary failure, 504 mechanism not
                # offered): a fresh token would not help.
                kind = FailureKind.AUTHENTICATION if reply.code >= 500 else (
                    failure_of(reply) if failure_of(reply) is not FailureKind.NONE
                    else FailureKind.CONNECTION)
                raise _AttemptFailed(reply, kind,
                                     f"The upstream {self.where} refused AUTH: {reply}")
            row = recognise(reply, self.app_only)
            if row is not None and row.keeps_token:
                # A verdict on the account (SMTP AUTH disabled), not on the token:
                # throwing a good token away and fetching another cannot help.
                raise _AttemptFailed(reply, FailureKind.ACCOUNT_HELD,
                                     f"The upstream {self.where} refused AUTH for "
                                     f"{self.account.user}: {reply}.  " + row.advice(
                                         user=self.account.user,
                                         client_id=self.account.client_id or "",
                                         account=self.account.name))
            self.tokens.token_rejected(token)
            log.warn(
                "Upstream {where} refused the token of account {account} "
                "(attempt {attempt}): {upstream_reply}",
                where=self.where, account=self.account.name, attempt=attempt,
                upstream_reply=str(reply),
            )
        raise _AttemptFailed(
            reply, FailureKind.AUTHENTICATION,
            authentication_detail(self.account.user, reply, self.app_only,
                                  self.account.client_id or ""),
        )

    @property
    def app_only(self) -> bool:
        """Whether the account signs in as the app itself (client credentials)."""
        return self.account.flow == "client_credentials"

    async def _token(self) -> str:
        try:
            token: str = await self.tokens.access_token()
        except Exception as e:
            raise token_failure(e, self.account.name, self.reactor.seconds()) from None
        return token

    def _client_tls(self) -> Any:
        if self._tls is None:
            self._tls = client_tls(self.account.smtp_host, self.account.ca_file)
        return self._tls

    async def _secure_connection(self) -> UpstreamConnection:
        try:
            return await open_connection(
                self.reactor, self.account.smtp_host, self.account.smtp_port,
                self.account.smtp_implicit_tls,
                self._client_tls(),
                self.helo_name, self.timeouts,
            )
        except ConnectionTrouble as trouble:
            reply = trouble_reply(self.where, trouble)
            raise _AttemptFailed(reply, FailureKind.CONNECTION, str(reply)) from None
        except UpstreamRefused as refused:
            kind = failure_of(refused.reply)
            if kind is FailureKind.NONE:  # an Enum member is always truthy: no `or`
                kind = FailureKind.CONNECTION
            raise _AttemptFailed(
                refused.reply, kind,
                f"The upstream {self.where} refused {refused.step}: {refused.reply}",
            ) from None
