"""
Large messages through Microsoft Graph: the message as a draft without its large
attachments, each of them attached with an upload session in ranges streamed from the
spool, then the draft sent.  Microsoft's steps, and the only way past the 4 MB request
(https://learn.microsoft.com/graph/outlook-large-attachments):

1. C{POST /users/{user}/messages} with the MIME (base64, C{text/plain}): a draft
   (https://learn.microsoft.com/graph/api/user-post-messages; C{Mail.ReadWrite}).
2. For each attachment cut out of it: C{POST .../messages/{id}/attachments/
   createUploadSession} with C{{"AttachmentItem": {"attachmentType": "file", "name",
   "size", "contentType", "isInline", "contentId"}}}
   (https://learn.microsoft.com/graph/api/attachment-createuploadsession), then C{PUT}
   to its pre-authenticated C{uploadUrl} (no C{Authorization}) with C{Content-Range:
   bytes a-b/total}, ranges of at most 4 MB in order, following C{nextExpectedRanges};
   the last answers C{201 Created}.
   A file under 3 MB goes in one C{POST .../messages/{id}/attachments} instead, as a
   C{#microsoft.graph.fileAttachment} (https://learn.microsoft.com/graph/api/message-post-attachments).
3. C{POST .../messages/{id}/send}: C{202}
   (https://learn.microsoft.com/graph/api/message-send).

When anything fails after the draft exists, the draft is deleted (C{DELETE
.../messages/{id}}: https://learn.microsoft.com/graph/api/message-delete) so that no
half-built message waits in the mailbox's Drafts folder; the message stays queued (or
bounces) as the failure says.

What survives (the fidelity limits, also in the README): the draft is Exchange's
reading of the MIME, and the uploaded files are attachments Exchange adds to it, so
the sent message is Exchange's new MIME: the header fields Exchange keeps, the text
and HTML bodies, inline images (Content-ID kept), the files byte for byte; not the
original MIME structure, boundaries or transfer encodings.  A signed or encrypted
message (S/MIME, C{multipart/signed}, C{application/pkcs7-mime}) cannot be taken apart
without breaking it: it is refused rather than sent broken.

Memory: the draft (at most what one request carries) and one range at a time, whatever
the message's size.  Never logs the token or the upload URL (it carries a token).
"""

from __future__ import annotations

import base64
import email.errors
import email.header
import email.parser
import email.policy
import json
import os
from typing import Any, BinaryIO, Iterator, Protocol

from xrelay.envelope import DeliveryResult, FailureKind, OutboundMessage, Outcome, Reply
from xrelay.transport.graphmessage import GraphStop, with_envelope_recipients
from xrelay.transport.mimeparts import Part, decoded_blocks, decoded_size, scan_parts, without_spans



class GraphCalls(Protocol):
    """
    What the upload path needs of the Graph transport (L{xrelay.transport.graph}), which
    calls this module: named here so that neither module imports the other.
    """

    @property
    def user_url(self) -> str: ...

    async def call(self, method: str, url: str, body: bytes | None = None,
                   content_type: str | None = None) -> tuple[Any, bytes]: ...

    async def plain_call(self, method: str, url: str, body: bytes | None,
                         headers: dict[str, str]) -> tuple[Any, bytes]: ...

    def result(self, message: OutboundMessage, response: Any, content: bytes,
               accepted: int = 202) -> DeliveryResult: ...

    def failure(self, response: Any, content: bytes) -> GraphStop: ...

__all__ = ["send_with_upload_sessions", "RANGE_BYTES", "lifted_parts"]

#: Bytes per PUT: under the documented 4 MB ("up to 4 MB each time"), and a multiple of
#: 320 KiB as Graph's upload sessions prefer
#: (https://learn.microsoft.com/graph/api/driveitem-createuploadsession).
RANGE_BYTES = 10 * 320 * 1024
#: The message, as the draft, must fit one request (4 MB as base64) with room to spare.
DRAFT_BYTES = 4 * 1024 * 1024 // 4 * 3 - 64 * 1024
#: Files under this go in one request (the 4 MB request holds 3 MB as base64, with
#: room for the JSON around it); larger ones through an upload session.
SMALL_ATTACHMENT_BYTES = 3 * 1024 * 1024 - 64 * 1024
_SIGNED = (b"multipart/signed", b"application/pkcs7-mime", b"application/x-pkcs7-mime")


def _display_name(filename: str) -> str:
    """A file name as people read it: RFC 2047 encoded words decoded."""
    if "=?" not in filename:
        return filename
    try:
        return str(email.header.make_header(email.header.decode_header(filename)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return filename


def _signed_or_encrypted(f: BinaryIO) -> bool:
    """Whether the message's own Content-Type is S/MIME (signed or enveloped)."""
    head = b""
    for line in f:
        if line in (b"\r\n", b"\n") or len(head) > 256 * 1024:
            break
        head += line
    f.seek(0)
    content_type = email.parser.BytesHeaderParser(
        policy=email.policy.compat32).parsebytes(head).get_content_type()
    return content_type.encode() in _SIGNED


def lifted_parts(parts: list[Part], size: int) -> list[Part] | None:
    """
    The attachments to upload separately, largest first, until the rest of the
    message fits one request; C{None} when even without all of them it does not.
    """
    lifted: list[Part] = []
    rest = size
    for part in sorted((p for p in parts if p.is_attachment), key=lambda p: -p.span):
        if rest <= DRAFT_BYTES:
            break
        lifted.append(part)
        rest -= part.span
    return lifted if rest <= DRAFT_BYTES else None


def _ranges(f: BinaryIO, part: Part) -> Iterator[bytes]:
    """The decoded attachment in ranges of L{RANGE_BYTES} (the last one shorter)."""
    pending: list[bytes] = []
    held = 0
    for block in decoded_blocks(f, part):
        pending.append(block)
        held += len(block)
        while held >= RANGE_BYTES:
            joined = b"".join(pending)
            yield joined[:RANGE_BYTES]
            rest = joined[RANGE_BYTES:]
            pending, held = ([rest] if rest else []), len(rest)
    if held:
        yield b"".join(pending)


def _refuse(message: OutboundMessage, text: str) -> DeliveryResult:
    reply = Reply(552, f"5.3.4 {text}")
    return DeliveryResult.for_all(message.recipients, Outcome.PERMANENT, reply,
                                  FailureKind.TOO_BIG, reply.text[6:])


async def send_with_upload_sessions(transport: GraphCalls,
                                    message: OutboundMessage) -> DeliveryResult:
    """Send C{message} as a draft with its large attachments uploaded, then sent."""
    with open(message.data_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if _signed_or_encrypted(f):
            return _refuse(message, "A signed or encrypted (S/MIME) message over Graph's "
                           "4 MB request cannot be split into a draft and uploads "
                           "without breaking its signature; use transport = \"smtp\"")
        parts = scan_parts(f)
        lifted = lifted_parts(parts, size)
        if lifted is None:
            return _refuse(message, f"Message too big for Microsoft Graph: {size} bytes "
                           "and its text is over the 4 MB request even without its "
                           "attachments; use transport = \"smtp\"")
        draft = with_envelope_recipients(without_spans(f, size, lifted), message.recipients)
        draft_id = None
        try:
            response, content = await transport.call(
                "POST", f"{transport.user_url}/messages", base64.b64encode(draft),
                "text/plain")
            del draft
            if response.code != 201:
                return transport.failure(response, content).result(message)
            draft_id = str(json.loads(content)["id"])
            for part in lifted:
                failed = await _upload(transport, message, f, part, draft_id)
                if failed is not None:
                    return await _discard(transport, message, draft_id, failed)
            response, content = await transport.call(
                "POST", f"{transport.user_url}/messages/{draft_id}/send")
            result = transport.result(message, response, content)
            if result.recipients[0].outcome is not Outcome.DELIVERED:
                return await _discard(transport, message, draft_id, result)
            return result
        except GraphStop as stop:
            if draft_id is None:
                return stop.result(message)
            return await _discard(transport, message, draft_id, stop.result(message))
        except (ValueError, KeyError, TypeError) as e:
            reply = Reply(451, f"4.4.0 Microsoft Graph answered what xrelay cannot read "
                               f"({type(e).__name__})")
            failed = DeliveryResult.for_all(message.recipients, Outcome.TEMPORARY, reply,
                                            FailureKind.CONNECTION, reply.text[6:])
            if draft_id is None:
                return failed
            return await _discard(transport, message, draft_id, failed)


async def _upload(transport: GraphCalls, message: OutboundMessage, f: BinaryIO,
                  part: Part, draft_id: str) -> DeliveryResult | None:
    """
    Attach one part: a file under 3 MB in one C{POST .../attachments}, a larger one
    through an upload session (Microsoft's rule for choosing: "If the file size is under
    3 MB, do a single POST ... between 3 MB and 150 MB, create an upload session",
    https://learn.microsoft.com/graph/outlook-large-attachments).  The failure's
    result, or C{None}.
    """
    size = decoded_size(f, part)
    name = _display_name(part.filename) or "attachment"
    if size < SMALL_ATTACHMENT_BYTES:
        # https://learn.microsoft.com/graph/api/message-post-attachments
        attachment: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.fileAttachment", "name": name,
            "contentType": part.content_type,
            "contentBytes": base64.b64encode(b"".join(decoded_blocks(f, part))).decode()}
        if part.content_id:
            attachment.update(isInline=part.disposition != "attachment",
                              contentId=part.content_id)
        response, content = await transport.call(
            "POST", f"{transport.user_url}/messages/{draft_id}/attachments",
            json.dumps(attachment).encode(), "application/json")
        del attachment
        if response.code != 201:
            return transport.failure(response, content).result(message)
        return None
    item: dict[str, Any] = {"attachmentType": "file", "name": name, "size": size,
                            "contentType": part.content_type}
    if part.content_id:
        item.update(isInline=part.disposition != "attachment", contentId=part.content_id)
    response, content = await transport.call(
        "POST", f"{transport.user_url}/messages/{draft_id}/attachments/createUploadSession",
        json.dumps({"AttachmentItem": item}).encode(), "application/json")
    if response.code != 201:
        return transport.failure(response, content).result(message)
    upload_url = str(json.loads(content)["uploadUrl"])
    start = 0
    for chunk in _ranges(f, part):
        end = start + len(chunk) - 1
        response, content = await transport.plain_call("PUT", upload_url, chunk, {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"bytes {start}-{end}/{size}"})
        start = end + 1
        if response.code == 201 and start == size:
            return None
        if response.code != 200:
            return transport.failure(response, content).result(message)
        expected = [str(r) for r in json.loads(content).get("nextExpectedRanges", [])]
        if expected and expected[0].split("-")[0] != str(start):
            reply = Reply(451, f"4.4.0 Microsoft Graph upload session expects range "
                               f"{expected[0]}, not {start}-")
            return DeliveryResult.for_all(message.recipients, Outcome.TEMPORARY, reply,
                                          FailureKind.CONNECTION, reply.text[6:])
    reply = Reply(451, "4.4.0 Microsoft Graph upload session did not complete the "
                       "attachment")
    return DeliveryResult.for_all(message.recipients, Outcome.TEMPORARY, reply,
                                  FailureKind.CONNECTION, reply.text[6:])


async def _discard(transport: GraphCalls, message: OutboundMessage, draft_id: str,
                   result: DeliveryResult) -> DeliveryResult:
    """Delete the draft of a failed attempt (best effort), then give its result."""
    try:
        await transport.call("DELETE", f"{transport.user_url}/messages/{draft_id}")
    except GraphStop:
        pass  # the draft stays in Drafts; the result says what went wrong
    return result
