"""
The Microsoft Graph transport: C{POST {graph_url}/users/{user}/sendMail} with the MIME
message base64-encoded as C{text/plain}, for tenants where SMTP AUTH is switched off;
messages over the single-request limit go as a draft with upload sessions
(L{xrelay.transport.graphupload}) when the account allows it.

Graph has no envelope: it takes the recipients from the MIME header fields To, Cc and
Bcc ("provide the MIME content with the applicable Internet message headers ("To",
"CC", "BCC", "Subject")": https://learn.microsoft.com/graph/api/user-sendmail).  So
that exactly the envelope recipients get the message, once each, the transport
rewrites those fields when they and the envelope differ (L{with_envelope_recipients}):
To and Cc keep the envelope recipients they name, every other envelope recipient goes
into one Bcc field (which Exchange does not show to the others), and addresses that are
not envelope recipients are left out.  A message whose fields name exactly its envelope
is sent byte for byte as spooled.

This module must never log the token or put it into a result, and never let an HTTP
error fail the Deferred: every response becomes a L{DeliveryResult}.
"""

from __future__ import annotations

import base64
import email.utils
import json
import os
from typing import Any
from urllib.parse import quote

import attrs
import treq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from xrelay.config import AccountConfig
from xrelay.envelope import DeliveryResult, FailureKind, OutboundMessage, Outcome, Reply
from xrelay.interfaces import ITokenSource, ITransport
from xrelay.replies import recognise
from xrelay.transport.classify import failure_of, outcome_of, send_as_detail
from xrelay.transport.graphmessage import GraphStop, with_envelope_recipients
from xrelay.transport.graphupload import send_with_upload_sessions
from xrelay.transport.pool import token_failure
from xrelay.transport.tls import https_policy

log = Logger()

#: Graph's limit on one request's body; the base64 form of the message counts.
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: Seconds for the whole request (connect, TLS, upload, answer).
REQUEST_TIMEOUT = 120


def base64_size(size: int) -> int:
    """Length of the base64 encoding of C{size} bytes."""
    return 4 * ((size + 2) // 3)


def retry_after_seconds(value: bytes | str | None, now: float) -> float | None:
    """C{Retry-After} as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def graph_error(body: bytes) -> tuple[str, str]:
    """Graph's C{error.code} and C{error.message}, or blanks for a body that is not one."""
    try:
        error = json.loads(body)["error"]
        return str(error.get("code", "")), str(error.get("message", ""))[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        return "", ""


@implementer(ITransport)
@attrs.define(eq=False)
class GraphTransport:
    """Delivers through one account with Graph C{sendMail} (MIME)."""

    account: AccountConfig
    tokens: ITokenSource
    reactor: Any
    timeout: float = REQUEST_TIMEOUT
    _pool: HTTPConnectionPool = attrs.field(init=False)
    _http: Any = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._pool.maxPersistentPerHost = max(1, self.account.max_connections)
        agent = Agent(self.reactor, https_policy(self.account.ca_file), pool=self._pool)
        self._http = treq.client.HTTPClient(agent)

    @property
    def url(self) -> str:
        return (
            f"{self.account.graph_url.rstrip('/')}/users/"
            f"{quote(self.account.user, safe='@')}/sendMail"
        )

    def deliver(self, message: OutboundMessage) -> Deferred[DeliveryResult]:
        return ensureDeferred(self._deliver(message))

    def close(self) -> Deferred[None]:
        return self._pool.closeCachedConnections()

    async def _deliver(self, message: OutboundMessage) -> DeliveryResult:
        fields: dict[str, Any] = dict(message_id=message.entry_id, account=self.account.name,
                                      sender=message.sender)
        try:
            result = await self._attempt(message)
        except Exception:
            log.failure("Unexpected error delivering {message_id} via Graph", **fields)
            result = DeliveryResult.for_all(
                message.recipients, Outcome.TEMPORARY,
                Reply(451, "4.3.0 Internal error in xrelay's Graph transport"),
            )
        reply = result.recipients[0].reply if result.recipients else None
        log.info(
            "Graph {account} {outcome} {message_id} from <{sender}>: {upstream_reply}",
            outcome=result.recipients[0].outcome.value if result.recipients else "none",
            upstream_reply=str(reply), failure=result.failure.value, **fields,
        )
        return result

    def _all(self, message: OutboundMessage, outcome: Outcome, reply: Reply,
             failure: FailureKind = FailureKind.NONE, detail: str = "",
             retry_after: float | None = None) -> DeliveryResult:
        return DeliveryResult.for_all(message.recipients, outcome, reply, failure,
                                      detail, retry_after)

    @property
    def user_url(self) -> str:
        return f"{self.account.graph_url.rstrip('/')}/users/{quote(self.account.user, safe='@')}"

    async def _attempt(self, message: OutboundMessage) -> DeliveryResult:
        try:
            size = os.path.getsize(message.data_path)
            # Read only what one request can carry: a larger message is never loaded.
            data = None
            if size <= MAX_REQUEST_BYTES:
                with open(message.data_path, "rb") as f:
                    data = with_envelope_recipients(f.read(), message.recipients)
        except OSError as e:
            reply = Reply(451, f"4.3.0 xrelay cannot read the spooled message: {e.strerror}")
            return self._all(message, Outcome.TEMPORARY, reply)
        if data is None or base64_size(len(data)) > MAX_REQUEST_BYTES:
            if self.account.graph_large_messages == "upload_session":
                return await send_with_upload_sessions(self, message)
            encoded = base64_size(len(data) if data is not None else size)
            reply = Reply(
                552,
                f"5.3.4 Message too big for Microsoft Graph sendMail: {size} bytes "
                f"is {encoded} bytes as base64, over the 4 MB single-request limit "
                "(set graph_large_messages = \"upload_session\" or use transport = "
                "\"smtp\" for large messages)",
            )
            return self._all(message, Outcome.PERMANENT, reply, FailureKind.TOO_BIG,
                             reply.text[6:])
        try:
            response, content = await self.call(
                "POST", f"{self.user_url}/sendMail", base64.b64encode(data), "text/plain")
        except GraphStop as stop:
            return stop.result(message)
        return self.result(message, response, content)

    async def call(self, method: str, url: str, body: bytes | None = None,
                   content_type: str | None = None) -> tuple[Any, bytes]:
        """
        One authorised Graph request: a token, the request, and on a first 401 a fresh
        token and the request once more.  Raises L{GraphStop} when no answer came (no
        token, no connection); every answer is returned for the caller to judge.
        """
        for attempt in (1, 2):
            try:
                token: str = await self.tokens.access_token()
            except Exception as e:
                failed = token_failure(e, self.account.name, self.reactor.seconds())
                raise GraphStop(Outcome.TEMPORARY, failed.reply, failed.failure,
                                failed.detail, failed.retry_after) from None
            headers = {"Authorization": f"Bearer {token}"}
            if content_type is not None:
                headers["Content-Type"] = content_type
            response, content = await self.plain_call(method, url, body, headers)
            if response.code == 401 and attempt == 1:
                self.tokens.token_rejected(token)
                continue
            return response, content
        raise AssertionError("unreachable")

    async def plain_call(self, method: str, url: str, body: bytes | None,
                         headers: dict[str, str]) -> tuple[Any, bytes]:
        """A request as is (an upload URL carries its own authorisation)."""
        try:
            response = await self._http.request(method, url, data=body, headers=headers,
                                                timeout=self.timeout)
            content = await response.content()
        except Exception as e:
            why = str(e) or type(e).__name__
            reply = Reply(451, f"4.4.2 Graph request to {self.account.graph_url} "
                               f"failed: {why}")
            raise GraphStop(Outcome.TEMPORARY, reply, FailureKind.CONNECTION,
                            reply.text[6:]) from None
        return response, content

    def result(self, message: OutboundMessage, response: Any, content: bytes,
               accepted: int = 202) -> DeliveryResult:
        """The delivery result for Graph's answer to the request that sends."""
        status = response.code
        if status == accepted:
            return self._all(message, Outcome.DELIVERED,
                             Reply(250, f"2.0.0 Accepted by Microsoft Graph (HTTP {status})"))
        return self.failure(response, content).result(message)

    def failure(self, response: Any, content: bytes) -> "GraphStop":
        """
        What a Graph error answer means, in the reply table's vocabulary: the transport
        writes it as an SMTP-like reply (C{Microsoft Graph: HTTP 404
        MailboxNotEnabledForRESTAPI: ...}) and L{xrelay.replies} decides, so that an
        account-level error holds the account with its fix instead of bouncing each
        message.
        """
        status = response.code
        code, text = graph_error(content)
        said = f"HTTP {status}{' ' + code if code else ''}{': ' + text if text else ''}"
        if status == 401:
            reply = Reply(535, f"5.7.3 Graph refused the token twice ({said})")
            return GraphStop(Outcome.TEMPORARY, reply, FailureKind.AUTHENTICATION,
                             f"Graph refused a freshly fetched token for "
                             f"{self.account.user}: {said}.  Check the app's Mail.Send "
                             "permission and admin consent.  The message stays queued.")
        if status in (429, 503) or status >= 500:
            retry = retry_after_seconds(
                response.headers.getRawHeaders(b"retry-after", [None])[0],
                self.reactor.seconds(),
            )
            throttled = status in (429, 503)
            reply = Reply(451, f"4.7.0 Microsoft Graph: {said}"
                          if throttled else f"4.4.0 Microsoft Graph: {said}")
            return GraphStop(Outcome.TEMPORARY, reply,
                             FailureKind.THROTTLED if throttled else FailureKind.CONNECTION,
                             reply.text[6:], retry)
        if status == 403 and code == "ErrorSendAsDenied":
            reply = Reply(554, f"5.2.252 SendAsDenied; Microsoft Graph: {said}")
            return GraphStop(Outcome.PERMANENT, reply, FailureKind.SEND_AS_DENIED,
                             send_as_detail(self.account.user, "<sender>"))
        if status == 413:
            reply = Reply(552, f"5.3.4 Microsoft Graph: {said}")
            return GraphStop(Outcome.PERMANENT, reply, FailureKind.TOO_BIG, reply.text[6:])
        # 403 (permission, consent, an access policy, a full mailbox), 404 (no usable
        # mailbox) and the rest: the reply table knows the account-level ones.
        reply = (Reply(451, f"4.7.0 Microsoft Graph: {said}") if status == 403
                 else Reply(554, f"5.6.0 Microsoft Graph: {said}"))
        row = recognise(reply, self.account.flow == "client_credentials")
        failure = failure_of(reply)
        detail = reply.text[6:]
        if row is not None and row.hold is not None:
            detail += "  " + row.advice(user=self.account.user,
                                        client_id=self.account.client_id or "",
                                        account=self.account.name)
        return GraphStop(outcome_of(reply), reply, failure, detail)


__all__ = ["GraphTransport", "GraphStop", "with_envelope_recipients", "base64_size",
           "retry_after_seconds", "graph_error", "MAX_REQUEST_BYTES"]
