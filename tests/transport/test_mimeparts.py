"""The MIME layout scanner the Graph upload sessions cut and stream attachments with."""

from __future__ import annotations

import email
import email.policy
import io
import os
from email.message import EmailMessage

from xrelay.transport.mimeparts import decoded_blocks, decoded_size, scan_parts, without_spans


def scan_with(pdf: bytes, image: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = "scanner@example.com"
    msg["To"] = "alice@example.net"
    msg["Subject"] = "scan"
    msg.set_content("Your scan is attached.")
    msg.add_alternative("<p>Your scan <img src=\"cid:logo@x\"></p>", subtype="html")
    msg.get_payload()[1].add_related(image, "image", "png", cid="<logo@x>")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="scan 1.pdf")
    return msg.as_bytes(policy=email.policy.SMTP)


def test_leaf_parts_are_found_decoded_and_cut_out() -> None:
    pdf, image = os.urandom(300_001), os.urandom(5_000)
    data = scan_with(pdf, image)
    f = io.BytesIO(data)
    parts = scan_parts(f)
    assert [p.content_type for p in parts] == ["text/plain", "text/html", "image/png",
                                              "application/pdf"]
    [attachment] = [p for p in parts if p.filename]
    assert attachment.filename == "scan 1.pdf" and attachment.disposition == "attachment"
    assert b"".join(decoded_blocks(f, attachment)) == pdf
    assert decoded_size(f, attachment) == len(pdf)
    [inline] = [p for p in parts if p.content_id]
    assert inline.is_attachment and inline.content_id == "logo@x"
    assert b"".join(decoded_blocks(f, inline)) == image
    assert not parts[0].is_attachment
    rest = without_spans(f, len(data), [attachment])
    assert len(rest) == len(data) - attachment.span
    parsed = email.message_from_bytes(rest, policy=email.policy.default)
    assert [p.get_content_type() for p in parsed.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "multipart/related",
        "text/html", "image/png"]
    assert parsed.defects == []


def test_a_single_part_message_has_no_parts() -> None:
    assert scan_parts(io.BytesIO(b"Subject: x\r\n\r\nbody\r\n")) == []
