"""
Bounces: RFC 3464 delivery status notifications for messages that cannot be delivered.

A bounce is a C{multipart/report; report-type=delivery-status} with three parts: a text
an administrator can act on (why, and what to change: for SendAsDenied, how to grant
Send As or use C{rewrite_from}), the machine-readable C{message/delivery-status} with the
upstream's exact reply as C{Diagnostic-Code}, and the original message's headers as
C{text/rfc822-headers} (never its body: a scan may be large and confidential).

L{build_bounce} builds bytes only.  L{spool_bounce} is the one place a bounce is
written: it decides whether to bounce at all (never to the null sender, never for a
bounce), addresses it, and spools it like any other message, for the delivery engine
and for an operator's C{xrelay queue bounce} alike (with or without a running daemon).
It never sends: the caller releases the bounce once the original's record is durable,
or withdraws it with L{withdraw_bounce}.
"""

from __future__ import annotations

import email.utils
import re
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from typing import TYPE_CHECKING, Sequence

import attrs
from twisted.logger import Logger

from xrelay.envelope import DeliveryResult, Envelope, FailureKind, Reply
from xrelay.interfaces import SpoolFull, UnknownEntry

if TYPE_CHECKING:
    from xrelay.config import AccountConfig, Config
    from xrelay.interfaces import IMessageHistory, ISpool, ISpoolEntry

log = Logger()

#: Original headers beyond this are cut: enough to identify the message.
MAX_ORIGINAL_HEADERS = 64 * 1024

SEND_AS_HELP = (
    "Exchange did not let the upstream mailbox {user} send as {sender}{which}, so this "
    "message was returned and will not be tried again.  To fix it, either grant {user} "
    "Send As permission for {sender} (Exchange admin center > Recipients > Mailboxes > "
    "{sender} > Delegation > Send as, or in PowerShell: Add-RecipientPermission "
    "-Identity {sender} -Trustee {user} -AccessRights SendAs; it can take up to an hour "
    "to apply), or set rewrite_from = true for account \"{account}\" in xrelay.toml, so "
    "that xrelay sends as {user} and keeps {sender} in Reply-To."
)

#: Exchange's SendAsDenied text names the address it refused (the envelope sender, or
#: the From: address when only that is not allowed): "... not allowed to send as <x>;".
_REFUSED_ADDRESS = re.compile(r"not allowed to send as\s+<?([^\s;<>]+@[^\s;<>]+)>?",
                              re.IGNORECASE)


def send_as_help(user: str, envelope_sender: str, account: str,
                 replies: Sequence[Reply]) -> str:
    """
    The one explanation of a Send As refusal: the address Exchange named (the From:
    address can be refused while the envelope sender is allowed), and the fix, once.
    """
    refused = next((m.group(1) for r in replies
                    if (m := _REFUSED_ADDRESS.search(str(r))) is not None), envelope_sender)
    which = ("" if refused.lower() == envelope_sender.lower() else
             f" (the From: address of the message; its envelope sender was "
             f"{envelope_sender or '<>'})")
    return SEND_AS_HELP.format(user=user, sender=refused, which=which, account=account)


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


class BounceNotSpooled(Exception):
    """A bounce could not be stored; the original must stay queued."""


def bounce_message(config: "Config", entry: "ISpoolEntry", account: "AccountConfig",
                   result: DeliveryResult, failed: Sequence[FailedRecipient],
                   now: float) -> tuple[Envelope, bytes]:
    """
    The envelope and bytes of the bounce of C{entry} for the C{failed} recipients: to
    its sender and C{[delivery] bounce_to}, sent as the account's own mailbox (the one
    sender it may always use: Exchange refuses others, the null one included, without
    Send As).
    """
    explanation = result.detail
    if result.failure is FailureKind.SEND_AS_DENIED:
        # Only this text: the transport's detail says the same fix for the log (and,
        # while the sender is held, that the mail stays queued, which a bounce is not).
        explanation = send_as_help(account.user, entry.sender, account.name,
                                   [f.reply for f in failed] +
                                   [r.reply for r in result.recipients])
    to = [entry.sender]
    bounce_to = config.delivery.bounce_to
    if bounce_to and bounce_to.lower() != entry.sender.lower():
        to.append(bounce_to)
    data = build_bounce(
        reporting_mta=config.server.hostname,
        from_address=account.user,
        to=to,
        original_sender=entry.sender,
        original_headers=read_original_headers(entry.data_path),
        failed=failed,
        remote_mta=account.smtp_host if account.transport == "smtp" else None,
        arrival_date=entry.received_at,
        now=now,
        explanation=explanation,
    )
    envelope = Envelope(sender=account.user, recipients=tuple(to), account=account.name,
                        received_at=now)
    return envelope, data


async def spool_bounce(spool: "ISpool", config: "Config", entry: "ISpoolEntry",
                       account: "AccountConfig | None", result: DeliveryResult,
                       failed: Sequence[FailedRecipient], now: float,
                       history: "IMessageHistory") -> str | None:
    """
    Spool a DSN for these recipients of C{entry}, unless bouncing is wrong or
    impossible (then C{None}), and return its id.  It is not sent: the caller first
    makes the original's new record durable, then submits the bounce.

    @raise BounceNotSpooled: it could not be stored (full disk); nothing remains.
    """
    if entry.bounce_of is not None or not entry.sender:
        log.warn("{entry_id}: not bouncing a bounce or a null-sender message",
                 entry_id=entry.entry_id)
        return None
    if account is None:
        log.error("{entry_id}: cannot bounce to <{sender}>: no account can send it",
                  entry_id=entry.entry_id, sender=entry.sender)
        return None
    envelope, data = bounce_message(config, entry, account, result, failed, now)
    try:
        incoming = spool.incoming(envelope, bounce_of=entry.entry_id)
        incoming.write(data)
        bounce_id = await incoming.commit()
    except SpoolFull as e:
        log.error("{entry_id}: could not spool the bounce to <{sender}>: the disk is "
                  "full ({error}); the message stays queued and is tried again; free "
                  "space in server.state_dir", entry_id=entry.entry_id,
                  sender=entry.sender, error=str(e))
        raise BounceNotSpooled(entry.entry_id) from None
    except Exception:
        log.failure("{entry_id}: could not spool the bounce to <{sender}>; the "
                    "message stays queued and is tried again",
                    entry_id=entry.entry_id, sender=entry.sender)
        raise BounceNotSpooled(entry.entry_id) from None
    to = envelope.recipients
    history.bounced(entry.entry_id, bounce_id, to, account.name, now)
    log.info("{entry_id}: bounce {bounce_id} to {to} for {count} recipients",
             entry_id=entry.entry_id, bounce_id=bounce_id, to=", ".join(to),
             count=len(failed))
    return bounce_id


async def withdraw_bounce(spool: "ISpool", entry_id: str, bounce_id: str) -> None:
    """The original's record could not be written: its bounce must not exist."""
    try:
        await spool.remove(spool.get(bounce_id))
    except UnknownEntry:
        return
    except Exception:
        # Still unreleased: recovery removes it at the next start (the original's
        # record never recorded this attempt).
        log.failure("{entry_id}: bounce {bounce_id} could not be withdrawn",
                    entry_id=entry_id, bounce_id=bounce_id)
        return
    log.warn("{entry_id}: bounce {bounce_id} withdrawn: the message's record could "
             "not be written; both are tried again", entry_id=entry_id,
             bounce_id=bounce_id)

