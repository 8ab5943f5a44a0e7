"""
The Microsoft Graph transport: C{POST {graph_url}/users/{user}/sendMail} with the MIME
message base64-encoded as C{text/plain}, for tenants where SMTP AUTH is switched off.

Graph answers for the whole message (C{202} means accepted for every recipient) and takes
the recipients from the MIME headers (To, Cc, Bcc), not from an envelope: envelope
recipients that no header names (a device's Bcc) are added in a C{Bcc:} header, which
Exchange removes before delivery, so that none is silently left out.  Messages over
the single-request limit (4 MB of request body, counted after base64) are failed with a
clear reason: the draft-and-upload-session route is not implemented.

This module must never log the token or put it into a result, and never let an HTTP
error fail the Deferred: every response becomes a L{DeliveryResult}.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
import json
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
from xrelay.transport.classify import send_as_detail
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


def with_envelope_recipients(data: bytes, recipients: "tuple[str, ...]") -> bytes:
    """
    The message with a C{Bcc:} header naming every envelope recipient that its To, Cc
    and Bcc headers do not, replacing any Bcc header it had (one Bcc at most, RFC 5322).
    """
    end = data.find(b"\r\n\r\n")
    head = data[: end + 2] if end >= 0 else data
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    named = {address.lower() for _, address in email.utils.getaddresses(
        [str(v) for field in ("to", "cc", "bcc") for v in headers.get_all(field, [])])}
    missing = [r for r in recipients if r.lower() not in named]
    if not missing:
        return data
    bcc = [address for _, address in email.utils.getaddresses(
        [str(v) for v in headers.get_all("bcc", [])]) if address] + missing
    kept, in_bcc = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and in_bcc:
            continue
        in_bcc = line[:4].lower() == b"bcc:"
        if not in_bcc:
            kept.append(line)
    field = b"Bcc: " + ", ".join(bcc).encode("utf-8") + b"\r\n"
    return field + b"\r\n".join(kept) + data[len(head):]


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

    async def _attempt(self, message: OutboundMessage) -> DeliveryResult:
        try:
            with open(message.data_path, "rb") as f:
                data = with_envelope_recipients(f.read(), message.recipients)
        except OSError as e:
            reply = Reply(451, f"4.3.0 xrelay cannot read the spooled message: {e.strerror}")
            return self._all(message, Outcome.TEMPORARY, reply)
        encoded = base64_size(len(data))
        if encoded > MAX_REQUEST_BYTES:
            reply = Reply(
                552,
                f"5.3.4 Message too big for Microsoft Graph sendMail: {len(data)} bytes "
                f"is {encoded} bytes as base64, over the 4 MB single-request limit "
                "(use transport = \"smtp\" for large messages)",
            )
            return self._all(message, Outcome.PERMANENT, reply, FailureKind.TOO_BIG,
                             reply.text[6:])
        body = base64.b64encode(data)
        for attempt in (1, 2):
            try:
                token: str = await self.tokens.access_token()
            except Exception as e:
                failed = token_failure(e, self.account.name, self.reactor.seconds())
                return self._all(message, Outcome.TEMPORARY, failed.reply, failed.failure,
                                 failed.detail, failed.retry_after)
            try:
                response = await self._http.post(
                    self.url, data=body, timeout=self.timeout,
                    headers={"Authorization": f"Bearer {token}",
                             "Content-Type": "text/plain"},
                )
                content = await response.content()
            except Exception as e:
                why = str(e) or type(e).__name__
                reply = Reply(451, f"4.4.2 Graph request to {self.account.graph_url} "
                                   f"failed: {why}")
                return self._all(message, Outcome.TEMPORARY, reply, FailureKind.CONNECTION,
                                 reply.text[6:])
            if response.code == 401 and attempt == 1:
                self.tokens.token_rejected(token)
                continue
            return self._result(message, response, content)
        raise AssertionError("unreachable")

    def _result(self, message: OutboundMessage, response: Any, content: bytes) -> DeliveryResult:
        status = response.code
        code, text = graph_error(content)
        said = f"HTTP {status}{' ' + code if code else ''}{': ' + text if text else ''}"
        if status == 202:
            return self._all(message, Outcome.DELIVERED,
                             Reply(250, "2.0.0 Accepted by Microsoft Graph sendMail (HTTP 202)"))
        if status == 401:
            reply = Reply(535, f"5.7.3 Graph refused the token twice ({said})")
            return self._all(message, Outcome.TEMPORARY, reply, FailureKind.AUTHENTICATION,
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
            return self._all(message, Outcome.TEMPORARY, reply,
                             FailureKind.THROTTLED if throttled else FailureKind.CONNECTION,
                             reply.text[6:], retry)
        if status == 403 and code == "ErrorSendAsDenied":
            reply = Reply(554, f"5.2.252 SendAsDenied; Microsoft Graph: {said}")
            return self._all(message, Outcome.PERMANENT, reply, FailureKind.SEND_AS_DENIED,
                             send_as_detail(self.account.user, message.sender))
        if status == 413:
            reply = Reply(552, f"5.3.4 Microsoft Graph: {said}")
            return self._all(message, Outcome.PERMANENT, reply, FailureKind.TOO_BIG,
                             reply.text[6:])
        if status == 403:
            # Missing permission or consent: an operator fixes it; don't bounce.
            reply = Reply(451, f"4.7.0 Microsoft Graph: {said}")
            return self._all(message, Outcome.TEMPORARY, reply, FailureKind.AUTHENTICATION,
                             reply.text[6:])
        reply = Reply(554, f"5.6.0 Microsoft Graph: {said}")
        return self._all(message, Outcome.PERMANENT, reply, FailureKind.NONE, reply.text[6:])
