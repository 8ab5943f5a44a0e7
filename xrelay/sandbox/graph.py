"""
The sandbox's Microsoft Graph mail endpoints, as Microsoft documents them:

- C{POST /v1.0/users/{user}/sendMail} with C{Content-Type: text/plain} and the MIME
  message as base64: C{202 Accepted}, empty body
  (https://learn.microsoft.com/graph/api/user-sendmail);
- C{POST /v1.0/users/{user}/messages} (MIME, the same way): a draft, C{201} with the
  message's C{id} (https://learn.microsoft.com/graph/api/user-post-messages; needs
  C{Mail.ReadWrite});
- C{POST .../messages/{id}/attachments/createUploadSession} with C{{"AttachmentItem":
  {...}}}: C{201} and an C{uploadSession} (C{uploadUrl}, C{expirationDateTime},
  C{nextExpectedRanges: ["0-"]}); then C{PUT uploadUrl} with C{Content-Range: bytes
  a-b/total}, no C{Authorization} (the URL is pre-authenticated), each range at most
  4 MB, in order: C{200} with the next expected range, C{201} with a C{Location} for
  the last (https://learn.microsoft.com/graph/outlook-large-attachments);
- C{POST .../messages/{id}/send}: C{202} (https://learn.microsoft.com/graph/api/message-send);
  C{DELETE .../messages/{id}}: C{204} (https://learn.microsoft.com/graph/api/message-delete).

Who receives what is recorded as Exchange delivers: every address of the To, Cc and Bcc
header fields, once each, and the Bcc field is not in the copy they get.  Switches make
it answer what the real service answers when the mailbox or the app is in trouble
(L{fail_mailbox}: 404 MailboxNotEnabledForRESTAPI, ErrorInvalidUser, ErrorQuotaExceeded)
and when it throttles (L{throttle_next}: 429 with Retry-After).

Bearer tokens are checked against the sandbox identity platform (audience
C{https://graph.microsoft.com}, app role or delegated scope C{Mail.Send}, and
C{Mail.ReadWrite} for drafts).  Must never log the token or the message.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.utils
import json
import re
import secrets
import time
from email import policy as email_policy
from typing import Any, Callable

import attrs

from .errors import Response, graph_error
from .exchange import ExchangeServer, Session
from .identity import GRAPH_RESOURCE, IdentityPlatform
from .mailbox import Mailbox

#: Graph refuses MIME requests larger than this (4 MB of request body).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
#: "upload ranges of bytes (up to 4 MB each time)":
#: https://learn.microsoft.com/graph/api/attachment-createuploadsession
MAX_RANGE_BYTES = 4 * 1024 * 1024
#: "you can attach files up to 150 MB": https://learn.microsoft.com/graph/outlook-large-attachments
MAX_ATTACHMENT_BYTES = 150 * 1024 * 1024
#: Where the sandbox's pre-authenticated upload URLs live (under its HTTPS base).
UPLOAD_PATH = "graph-upload"

#: What the real service answers for a mailbox or app in trouble (L{GraphMail.fail_mailbox}).
MAILBOX_FAILURES: dict[str, tuple[int, str, str]] = {
    # An unlicensed, inactive, soft-deleted or on-premises mailbox:
    # https://github.com/MicrosoftDocs/OfficeDocs-Support/pull/1036 (Microsoft's
    # article "REST API is not yet supported for this mailbox"; licence needed:
    # https://github.com/microsoftgraph/microsoft-graph-docs-contrib/issues/717)
    # (as answered: "The mailbox is either inactive, soft-deleted, or is hosted
    # on-premise.", https://github.com/iyear/E5SubBot/issues/39)
    "MailboxNotEnabledForRESTAPI": (404, "MailboxNotEnabledForRESTAPI",
                                    "The mailbox is either inactive, soft-deleted, or is "
                                    "hosted on-premise."),
    # "The requested user '<address>' is invalid." (a user without a mailbox, or an
    # address that is not its primary SMTP address):
    # https://github.com/microsoftgraph/microsoft-graph-docs/issues/7580
    # https://github.com/InnoGE/laravel-msgraph-mail/issues/16
    "ErrorInvalidUser": (404, "ErrorInvalidUser", "The requested user '{user}' is invalid."),
    # "Mailbox has exceeded maximum mailbox size." (the sending mailbox is full):
    # https://github.com/microsoftgraph/microsoft-graph-docs/issues/2927
    # https://learn.microsoft.com/exchange/client-developer/web-service-reference/responsecode
    "ErrorQuotaExceeded": (403, "ErrorQuotaExceeded", "Mailbox has exceeded maximum mailbox size."),
}


@attrs.define
class Attachment:
    """A file attached to a draft through an upload session (or being uploaded)."""

    name: str
    content_type: str
    size: int
    is_inline: bool = False
    content_id: str = ""
    data: bytearray = attrs.field(factory=bytearray, repr=False)


@attrs.define
class Draft:
    """A message in the Drafts folder, created from MIME, with uploaded attachments."""

    id: str
    user: str
    session: Session
    mime: bytes = attrs.field(repr=False)
    attachments: list[Attachment] = attrs.field(factory=list)


@attrs.define
class UploadSession:
    draft_id: str
    attachment: Attachment
    auth_token: str
    expires: float


def _envelope_of(headers: Any) -> list[str]:
    """Every address of To, Cc and Bcc, once each, in order (as Exchange delivers)."""
    fields = headers.get_all("To", []) + headers.get_all("Cc", []) + headers.get_all("Bcc", [])
    seen: dict[str, str] = {}
    for _, address in email.utils.getaddresses([str(f) for f in fields]):
        if address and address.lower() not in seen:
            seen[address.lower()] = address
    return list(seen.values())


def without_bcc(mime: bytes) -> bytes:
    """The message as its recipients get it: the Bcc field (folded lines too) removed."""
    end = mime.find(b"\r\n\r\n")
    head, rest = (mime[: end + 2], mime[end + 2:]) if end >= 0 else (mime, b"")
    kept, in_bcc = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and in_bcc:
            continue
        in_bcc = line[:4].lower() == b"bcc:"
        if not in_bcc:
            kept.append(line)
    return b"\r\n".join(kept) + rest


def with_attachments(mime: bytes, attachments: list[Attachment]) -> bytes:
    """
    The draft as sent: its MIME with the uploaded attachments as base64 parts of a
    C{multipart/mixed} (the draft's own one, or one wrapping it).
    """
    if not attachments:
        return mime
    boundary = "sandbox-" + secrets.token_hex(8)
    parts = []
    for a in attachments:
        disposition = "inline" if a.is_inline else "attachment"
        head = (f"Content-Type: {a.content_type or 'application/octet-stream'}; "
                f"name=\"{a.name}\"\r\nContent-Disposition: {disposition}; "
                f"filename=\"{a.name}\"\r\nContent-Transfer-Encoding: base64\r\n")
        if a.content_id:
            head += f"Content-ID: <{a.content_id}>\r\n"
        parts.append(head.encode() + b"\r\n" + base64.encodebytes(bytes(a.data)).replace(b"\n", b"\r\n"))
    end = mime.find(b"\r\n\r\n")
    block, body = mime[: end + 2], mime[end + 4:]
    kept: list[bytes] = []
    moved: list[bytes] = []
    in_type = False
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and in_type:
            moved[-1] += b"\r\n" + line
            continue
        in_type = line.split(b":", 1)[0].strip().lower() in (
            b"content-type", b"content-transfer-encoding", b"content-disposition")
        (moved if in_type else kept).append(line)
    inner = b"\r\n".join(moved) + b"\r\n\r\n" + body if moved else b"\r\n" + body
    out = b"\r\n".join(line for line in kept if line)
    out += (f"\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n").encode()
    out += f"--{boundary}\r\n".encode() + inner + b"\r\n"
    for part in parts:
        out += f"--{boundary}\r\n".encode() + part
    return out + f"--{boundary}--\r\n".encode()


@attrs.define
class GraphMail:
    """The mail endpoints' rules and switches (L{throttle_next}, L{fail_mailbox})."""

    identity: IdentityPlatform
    exchange: ExchangeServer
    mailbox: Mailbox
    now: Callable[[], float] = time.time
    max_request_bytes: int = MAX_REQUEST_BYTES
    drafts: dict[str, Draft] = attrs.field(factory=dict)
    uploads: dict[str, UploadSession] = attrs.field(factory=dict)
    #: Requests seen, as C{(method, what)} (C{what}: sendMail, draft, createUploadSession,
    #: upload, send, delete), for tests to count.
    requests: list[tuple[str, str]] = attrs.field(factory=list)
    #: The size of every range PUT to an upload URL, in order.
    range_sizes: list[int] = attrs.field(factory=list)
    _throttle: list[int] = attrs.field(factory=list)
    _failing: dict[str, str] = attrs.field(factory=dict)
    _fail_send: int = 0

    def throttle_next(self, count: int = 1, retry_after: int = 2, after: int = 0) -> None:
        """The next C{count} requests (after C{after} that go through) get C{429} with
        C{Retry-After: retry_after}."""
        self._throttle.extend([0] * after + [retry_after] * count)

    def fail_mailbox(self, user: str, kind: str | None) -> None:
        """Answer every request for C{user} as Graph does for a L{MAILBOX_FAILURES}
        condition, until C{fail_mailbox(user, None)}."""
        if kind is None:
            self._failing.pop(user.lower(), None)
        else:
            assert kind in MAILBOX_FAILURES, kind
            self._failing[user.lower()] = kind

    def fail_next_send(self, count: int = 1) -> None:
        """The next C{count} draft sends (C{POST .../send}) fail with 503."""
        self._fail_send += count

    # -- the routes ------------------------------------------------------------

    def handle(self, method: str, path: list[str], query: dict[str, str],
               headers: Callable[[str], str | None], body: bytes) -> Response | None:
        """The response for a Graph mail request, or C{None} when the path is not one."""
        if path[:1] == [UPLOAD_PATH] and len(path) == 2 and method == "PUT":
            self.requests.append((method, "upload"))
            return self.upload_range(path[1], query.get("authtoken", ""), headers("content-range"), body)
        if path[:2] != ["v1.0", "users"] or len(path) < 4:
            return None
        user, rest = path[2], path[3:]
        authorization, content_type = headers("authorization"), headers("content-type")
        if rest == ["sendMail"] and method == "POST":
            self.requests.append((method, "sendMail"))
            return self.send_mail(user, authorization, content_type, body)
        if rest == ["messages"] and method == "POST":
            self.requests.append((method, "draft"))
            return self.create_draft(user, authorization, content_type, body)
        if len(rest) == 3 and rest[0] == "messages" and rest[2] == "attachments" and method == "POST":
            self.requests.append((method, "attachment"))
            return self.add_attachment(user, rest[1], authorization, body)
        if len(rest) == 4 and rest[0] == "messages" and rest[2:] == ["attachments", "createUploadSession"] and method == "POST":
            self.requests.append((method, "createUploadSession"))
            return self.create_upload_session(user, rest[1], authorization, body)
        if len(rest) == 3 and rest[0] == "messages" and rest[2] == "send" and method == "POST":
            self.requests.append((method, "send"))
            return self.send_draft(user, rest[1], authorization)
        if len(rest) == 2 and rest[0] == "messages" and method == "DELETE":
            self.requests.append((method, "delete"))
            return self.delete_draft(user, rest[1], authorization)
        return None

    # -- sendMail --------------------------------------------------------------

    def send_mail(self, user: str, authorization: str | None, content_type: str | None, body: bytes) -> Response:
        checked = self._check(user, authorization, "Mail.Send")
        if isinstance(checked, Response):
            return checked
        now = self.now()
        if len(body) > self.max_request_bytes:
            return graph_error(413, "RequestBodyTooLarge", "The maximum request length supported is 4MB.", now)
        mime = self._mime(content_type, body)
        if isinstance(mime, Response):
            return mime
        return self._submit(checked, mime)

    # -- drafts and upload sessions ----------------------------------------------

    def create_draft(self, user: str, authorization: str | None, content_type: str | None, body: bytes) -> Response:
        checked = self._check(user, authorization, "Mail.ReadWrite")
        if isinstance(checked, Response):
            return checked
        if len(body) > self.max_request_bytes:
            return graph_error(413, "RequestBodyTooLarge", "The maximum request length supported is 4MB.", self.now())
        mime = self._mime(content_type, body)
        if isinstance(mime, Response):
            return mime
        draft = Draft("AAMkAD" + secrets.token_urlsafe(24), checked.mailbox, checked, mime)
        self.drafts[draft.id] = draft
        headers = email.parser.BytesHeaderParser(policy=email_policy.compat32).parsebytes(mime)
        # The message resource, as much of it as a client reads.
        return Response(201, {
            "@odata.context": f"{self.identity.base_url}/v1.0/$metadata#users('{user}')/messages/$entity",
            "id": draft.id, "isDraft": True, "subject": str(headers.get("Subject", "")),
            "internetMessageId": str(headers.get("Message-ID", "")).strip(),
        })

    def create_upload_session(self, user: str, draft_id: str, authorization: str | None, body: bytes) -> Response:
        checked = self._check(user, authorization, "Mail.ReadWrite")
        if isinstance(checked, Response):
            return checked
        now = self.now()
        draft = self.drafts.get(draft_id)
        if draft is None or draft.user.lower() != checked.mailbox.lower():
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.", now)
        try:
            item = json.loads(body)["AttachmentItem"]
            name, size = str(item["name"]), int(item["size"])
            if item.get("attachmentType") != "file":
                raise ValueError(item.get("attachmentType"))
        except (ValueError, KeyError, TypeError):
            return graph_error(400, "ErrorInvalidRequest", "The request is invalid: AttachmentItem with attachmentType, name and size expected.", now)
        if size > MAX_ATTACHMENT_BYTES:
            return graph_error(413, "ErrorAttachmentSizeLimitExceeded", "The attachment size exceeds the maximum size limit.", now)
        attachment = Attachment(name, str(item.get("contentType") or ""), size, bool(item.get("isInline")), str(item.get("contentId") or ""))
        session_id = "AAMkAD" + secrets.token_urlsafe(18)
        session = UploadSession(draft_id, attachment, secrets.token_urlsafe(24), now + 3600)
        self.uploads[session_id] = session
        return Response(201, {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": f"{self.identity.base_url}/{UPLOAD_PATH}/{session_id}?authtoken={session.auth_token}",
            "expirationDateTime": _graph_time(session.expires),
            "nextExpectedRanges": ["0-"],
        })

    def add_attachment(self, user: str, draft_id: str, authorization: str | None, body: bytes) -> Response:
        """
        C{POST .../messages/{id}/attachments} with a C{fileAttachment} (files under
        3 MB): https://learn.microsoft.com/graph/api/message-post-attachments
        """
        checked = self._check(user, authorization, "Mail.ReadWrite")
        if isinstance(checked, Response):
            return checked
        now = self.now()
        if len(body) > self.max_request_bytes:
            return graph_error(413, "RequestBodyTooLarge", "The maximum request length supported is 4MB.", now)
        draft = self.drafts.get(draft_id)
        if draft is None or draft.user.lower() != checked.mailbox.lower():
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.", now)
        try:
            item = json.loads(body)
            if item.get("@odata.type") != "#microsoft.graph.fileAttachment":
                raise ValueError(item.get("@odata.type"))
            data = base64.b64decode(item["contentBytes"], validate=True)
            name = str(item["name"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return graph_error(400, "ErrorInvalidRequest", "The request is invalid: a #microsoft.graph.fileAttachment with name and contentBytes expected.", now)
        attachment = Attachment(name, str(item.get("contentType") or ""), len(data), bool(item.get("isInline")),
                                str(item.get("contentId") or ""), bytearray(data))
        draft.attachments.append(attachment)
        return Response(201, {
            "@odata.type": "#microsoft.graph.fileAttachment", "id": "AAMkAD" + secrets.token_urlsafe(18),
            "name": name, "contentType": attachment.content_type, "size": attachment.size,
            "isInline": attachment.is_inline, "contentId": attachment.content_id or None,
        })

    def upload_range(self, session_id: str, auth_token: str, content_range: str | None, body: bytes) -> Response:
        now = self.now()
        session = self.uploads.get(session_id)
        if session is None or not secrets.compare_digest(session.auth_token, auth_token) or session.expires <= now:
            return graph_error(401, "InvalidAuthenticationToken", "Access token validation failure.", now)
        self.range_sizes.append(len(body))
        if len(body) > MAX_RANGE_BYTES:
            return graph_error(413, "RequestBodyTooLarge", "The maximum request length supported is 4MB.", now)
        match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", (content_range or "").strip())
        attachment = session.attachment
        received = len(attachment.data)
        if match is None:
            return graph_error(400, "ErrorInvalidRequest", "The Content-Range header is missing or malformed.", now)
        start, end, total = (int(g) for g in match.groups())
        if total != attachment.size or start != received or end - start + 1 != len(body) or end >= total:
            # "You must upload bytes in a file in order" (nextExpectedRanges); a range
            # out of order gets 416, as OneDrive's upload sessions answer it:
            # https://learn.microsoft.com/graph/api/driveitem-createuploadsession
            return graph_error(416, "ErrorInvalidRange", f"The range is not the expected one; next expected range: {received}-.", now)
        attachment.data += body
        if len(attachment.data) < attachment.size:
            return Response(200, {
                "@odata.context": "https://outlook.office.com/api/v2.0/$metadata#AttachmentSessions/$entity",
                "ExpirationDateTime": _graph_time(session.expires),
                "nextExpectedRanges": [str(len(attachment.data))],
            })
        del self.uploads[session_id]
        draft = self.drafts.get(session.draft_id)
        if draft is None:
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.", now)
        draft.attachments.append(attachment)
        attachment_id = "AAMkAD" + secrets.token_urlsafe(18)
        location = f"https://outlook.office.com/api/v2.0/Users('{draft.user}')/Messages('{draft.id}')/Attachments('{attachment_id}')"
        return Response(201, None, (("Location", location),))

    def send_draft(self, user: str, draft_id: str, authorization: str | None) -> Response:
        checked = self._check(user, authorization, "Mail.Send")
        if isinstance(checked, Response):
            return checked
        now = self.now()
        draft = self.drafts.get(draft_id)
        if draft is None or draft.user.lower() != checked.mailbox.lower():
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.", now)
        if self._fail_send:
            self._fail_send -= 1
            return graph_error(503, "ServiceUnavailable", "The service is temporarily unavailable.", now, (("Retry-After", "1"),))
        response = self._submit(checked, with_attachments(draft.mime, draft.attachments))
        if response.status == 202:
            del self.drafts[draft_id]  # sent: it moves to Sent Items
        return response

    def delete_draft(self, user: str, draft_id: str, authorization: str | None) -> Response:
        checked = self._check(user, authorization, "Mail.ReadWrite")
        if isinstance(checked, Response):
            return checked
        draft = self.drafts.get(draft_id)
        if draft is None or draft.user.lower() != checked.mailbox.lower():
            return graph_error(404, "ErrorItemNotFound", "The specified object was not found in the store.", self.now())
        del self.drafts[draft_id]
        return Response(204)

    # -- shared checks -----------------------------------------------------------

    def _check(self, user: str, authorization: str | None, permission: str) -> Session | Response:
        """The caller's session for C{user}, or Graph's refusal."""
        now = self.now()
        retry_after = self._throttle.pop(0) if self._throttle else 0
        if retry_after:
            # https://learn.microsoft.com/graph/throttling (429 with Retry-After)
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
        rbac = access.app_only and self.exchange.holds_app_role(access.client_id, f"Application {permission}", user)
        if permission not in access.permissions and not rbac:
            return graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", now)
        if access.app_only:
            session = Session(user, "graph", access.client_id, True)
        else:
            if user.lower() not in ("me", (access.upn or "").lower()):
                return graph_error(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.", now)
            session = Session(access.upn or user, "graph", access.client_id, False)
        failing = self._failing.get(session.mailbox.lower())
        if failing is not None:
            status, code, message = MAILBOX_FAILURES[failing]
            return graph_error(status, code, message.format(user=user), now)
        return session

    def _mime(self, content_type: str | None, body: bytes) -> bytes | Response:
        now = self.now()
        if (content_type or "").split(";")[0].strip().lower() != "text/plain":
            return graph_error(400, "ErrorInvalidRequest", "Cannot read the request body. JSON or MIME (text/plain) content expected.", now)
        try:
            mime = base64.b64decode(body.strip(), validate=False)
        except (binascii.Error, ValueError):
            mime = b""
        headers = email.parser.BytesHeaderParser(policy=email_policy.compat32).parsebytes(mime) if mime else None
        if headers is None or not headers.keys():
            return graph_error(400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content.", now)
        return mime

    def _submit(self, session: Session, mime: bytes) -> Response:
        """Send the MIME message: to every header recipient once, without the Bcc field."""
        now = self.now()
        headers = email.parser.BytesHeaderParser(policy=email_policy.compat32).parsebytes(mime)
        recipients = _envelope_of(headers)
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
        self.mailbox.deliver(senders[0], tuple(recipients), without_bcc(mime), session.mailbox, "graph", 0, "graph", message_id)
        return Response(202)

    def _may_send_as(self, session: Session, sender: str) -> bool:
        if session.app_only:
            # App-only Mail.Send may send as the user in the URL; anyone else needs a grant.
            if sender.lower() == session.mailbox.lower():
                return True
        return self.exchange.may_send_as(session, sender)


def _graph_time(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime(when))
