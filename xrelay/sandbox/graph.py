"""
The sandbox's Microsoft Graph C{sendMail} endpoint (MIME form):
C{POST /v1.0/users/{user}/sendMail} with C{Content-Type: text/plain} and the message as
base64, answered C{202 Accepted} with an empty body, or Graph's JSON error.

Bearer tokens are checked against the sandbox identity platform (audience
C{https://graph.microsoft.com}, app role or delegated scope C{Mail.Send}); Send As uses
the same grants as the SMTP server.  Must never log the token or the message.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.utils
import time
from email import policy as email_policy
from typing import Callable

import attrs

from .errors import Response, graph_error
from .exchange import ExchangeServer, Session
from .identity import GRAPH_RESOURCE, IdentityPlatform
from .mailbox import Mailbox

#: Graph refuses MIME requests larger than this (4 MB of request body).
MAX_REQUEST_BYTES = 4 * 1024 * 1024


@attrs.define
class GraphMail:
    """C{sendMail} rules and switches (L{throttle_next})."""

    identity: IdentityPlatform
    exchange: ExchangeServer
    mailbox: Mailbox
    now: Callable[[], float] = time.time
    max_request_bytes: int = MAX_REQUEST_BYTES
    _throttle: list[int] = attrs.field(factory=list)

    def throttle_next(self, count: int = 1, retry_after: int = 2) -> None:
        """The next C{count} requests get C{429} with C{Retry-After: retry_after}."""
        self._throttle.extend([retry_after] * count)

    def send_mail(self, user: str, authorization: str | None, content_type: str | None, body: bytes) -> Response:
        now = self.now()
        if self._throttle:
            retry_after = self._throttle.pop(0)
            return graph_error(
                429, "ApplicationThrottled", "Application is over its MailboxConcurrency limit.", now,
                (("Retry-After", str(retry_after)),),
            )
        if not authorization:
            return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.", now)
        scheme, _, token = authorization.partition(" ")
        access = self.identity.check_access_token(token.strip()) if scheme.lower() == "bearer" else None
        if access is None:
            return graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.", now)
        if access.audience != GRAPH_RESOURCE:
            return graph_error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.", now)
        rbac = access.app_only and self.exchange.holds_app_role(access.client_id, "Application Mail.Send", user)
        if "Mail.Send" not in access.permissions and not rbac:
            return graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", now)
        if access.app_only:
            session = Session(user, "graph", access.client_id, True)
        else:
            if user.lower() not in ("me", (access.upn or "").lower()):
                return graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", now)
            session = Session(access.upn or user, "graph", access.client_id, False)
        if len(body) > self.max_request_bytes:
            return graph_error(413, "RequestBodyTooLarge", "The maximum request length supported is 4MB.", now)
        if (content_type or "").split(";")[0].strip().lower() != "text/plain":
            return graph_error(400, "ErrorInvalidRequest", "Cannot read the request body. JSON or MIME (text/plain) content expected.", now)
        try:
            mime = base64.b64decode(body.strip(), validate=False)
        except (binascii.Error, ValueError):
            mime = b""
        headers = email.parser.BytesHeaderParser(policy=email_policy.compat32).parsebytes(mime) if mime else None
        if headers is None or not headers.keys():
            return graph_error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.", now)
        recipients = [a for _, a in email.utils.getaddresses(headers.get_all("To", []) + headers.get_all("Cc", []) + headers.get_all("Bcc", [])) if a]
        if not recipients:
            return graph_error(400, "ErrorInvalidRecipients", "At least one recipient isn't valid., A message can't be sent because it contains no recipients.", now)
        senders = [a for _, a in email.utils.getaddresses(headers.get_all("From", [])) if a] or [session.mailbox]
        for sender in senders:
            if not self._may_send_as(session, sender):
                return graph_error(
                    403, "ErrorSendAsDenied",
                    "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account., Cannot submit message.",
                    now,
                )
        message_id = (headers.get("Message-ID") or "").strip()
        self.mailbox.deliver(senders[0], tuple(recipients), mime, session.mailbox, "graph", 0, "graph", message_id)
        return Response(202)

    def _may_send_as(self, session: Session, sender: str) -> bool:
        if session.app_only:
            # App-only Mail.Send may send as the user in the URL; anyone else needs a grant.
            if sender.lower() == session.mailbox.lower():
                return True
        return self.exchange.may_send_as(session, sender)
