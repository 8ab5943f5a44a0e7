"""
Bounces: RFC 3464 delivery status notifications for messages that cannot be delivered.

A bounce is a C{multipart/report; report-type=delivery-status} with three parts: a text
an administrator can act on (why, and what to change: for SendAsDenied, how to grant
Send As or use C{rewrite_from}), the machine-readable C{message/delivery-status} with the
upstream's exact reply as C{Diagnostic-Code}, and the original message's headers as
C{text/rfc822-headers} (never its body: a scan may be large and confidential).

Builds bytes only; the engine decides whether to bounce (never to the null sender, never
for a bounce) and spools the result like any other message.
"""

from __future__ import annotations

import email.utils
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from typing import Sequence

import attrs

from xrelay.envelope import Reply

#: Original headers beyond this are cut: enough to identify the message.
MAX_ORIGINAL_HEADERS = 64 * 1024

SEND_AS_HELP = (
    "The upstream mailbox {user} is not allowed to send as {sender}.  Either grant it "
    "Send As permission for that address (Exchange admin center > Recipients > "
    "Mailboxes > {sender} > Delegation > Send as, or in PowerShell: "
    "Add-RecipientPermission -Identity {sender} -Trustee {user} -AccessRights SendAs), "
    "or set rewrite_from = true for account \"{account}\" in xrelay.toml, so that xrelay "
    "sends as {user} and keeps {sender} in Reply-To."
)


@attrs.frozen
class FailedRecipient:
    """One recipient to report, with the reply that decided its fate."""

    recipient: str
    reply: Reply
    #: The message was queued too long (C{max_age}) rather than refused.
    expired: bool = False

    @property
    def status(self) -> str:
        """The RFC 3463 status for the report."""
        if self.expired:
            return "4.4.7"
        enhanced = self.reply.enhanced
        if enhanced and enhanced.startswith("5"):
            return enhanced
        return "5.0.0"


def read_original_headers(path: str) -> str:
    """The header section of the spooled message, bounded, as text."""
    collected = []
    size = 0
    with open(path, "rb") as f:
        for line in f:
            if line in (b"\r\n", b"\n") or size + len(line) > MAX_ORIGINAL_HEADERS:
                break
            collected.append(line)
            size += len(line)
    return b"".join(collected).decode("utf-8", "replace").replace("\r\n", "\n")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_bounce(
    *,
    reporting_mta: str,
    from_address: str,
    to: Sequence[str],
    original_sender: str,
    original_headers: str,
    failed: Sequence[FailedRecipient],
    remote_mta: str | None,
    arrival_date: float,
    now: float,
    explanation: str = "",
) -> bytes:
    """
    The bounce message, CRLF wire format, ready to be spooled.

    @param explanation: extra text for the human part (e.g. how to fix Send As).
    """
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <{from_address}>"
    report["To"] = ", ".join(to)
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = email.utils.formatdate(now, localtime=False)
    report["Message-ID"] = email.utils.make_msgid("bounce", domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: do not answer this

    lines = [
        f"This is the mail relay at {reporting_mta}.",
        "",
        f"A message from {original_sender} could not be delivered to "
        f"{'this recipient' if len(failed) == 1 else 'these recipients'}:",
        "",
    ]
    for f in failed:
        why = "queued too long; last reply" if f.expired else "the server said"
        lines.append(f"  <{f.recipient}>: {why}: {f.reply.code} {_one_line(f.reply.text)}")
    if explanation:
        lines += ["", explanation]
    lines += ["", "The original message's headers are attached."]
    report.attach(MIMEText("\n".join(lines) + "\n", "plain", "utf-8"))

    status = Message()
    status.set_type("message/delivery-status")
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_message["Arrival-Date"] = email.utils.formatdate(arrival_date, localtime=False)
    blocks: list[Message | str] = [per_message]  # set_payload's type
    for f in failed:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {f.recipient}"
        block["Action"] = "failed"
        block["Status"] = f.status
        if remote_mta:
            block["Remote-MTA"] = f"dns; {remote_mta}"
        block["Diagnostic-Code"] = f"smtp; {f.reply.code} {_one_line(f.reply.text)}"
        blocks.append(block)
    status.set_payload(blocks)
    report.attach(status)

    headers = MIMEText(original_headers, "rfc822-headers", "utf-8")
    report.attach(headers)
    return report.as_bytes(policy=compat32.clone(linesep="\r\n"))
