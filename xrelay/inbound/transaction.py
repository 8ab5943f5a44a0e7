"""
The mail transaction of the inbound protocol (a mixin of
L{xrelay.inbound.protocol.ESMTPServer}): MAIL, RCPT and DATA, the message streamed to
the spool, and the reply at the end of DATA (after the commit, or the upstream's own in
pass-through mode).

This module must never answer 250 before the spool's commit fired, never keep more of
a message in memory than one packet's lines, and never let a refused message leave
anything in the spool.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.logger import Logger

from xrelay.envelope import DeliveryResult, Envelope, Outcome
from xrelay.history.records import AcceptedMessage
from xrelay.inbound.errors import SpoolFull
from xrelay.inbound.handler import decided, message_refusal, session_of
from xrelay.inbound.leniency import bare_lf_ends_data, lenient_greeting, strict_end_of_data_hint
from xrelay.inbound.lines import Line, data_line_bytes, ends_data
from xrelay.inbound.mailtransaction import Transaction
from xrelay.inbound.received import protocol_keyword, received_header
from xrelay.inbound.states import CLOSED, COMMAND, DATA
from xrelay.inbound.submission import feed_header_lines, header_block_never_ended, missing_fields
from xrelay.interfaces import IIncomingMessage
from xrelay.policy import route_refusal
from xrelay.records import Refusal
from xrelay.routing import route_size_limit, unsplittable

if TYPE_CHECKING:
    # ESMTPServer inherits from this mixin: it is checked against its surface.
    from xrelay.inbound.surface import ServerSurface as _Base
else:
    _Base = object

__all__ = ["MailCommands", "Transaction", "pass_through_reply"]

log = Logger()

#: Spool writes are gathered up to this many bytes (one packet's worth of lines).
WRITE_BATCH = 64 * 1024

_MAIL = re.compile(r"^FROM:\s*(?:<([^<>]*)>|([^<>\s]+))(?:\s+(.*))?$", re.I | re.S)
_RCPT = re.compile(r"^TO:\s*(?:<([^<>]*)>|([^<>\s]+))(?:\s+(.*))?$", re.I | re.S)


def mail_parameters(text: str, esmtp: bool) -> "tuple[int | None, bool, bool] | str":
    """
    MAIL FROM's parameters as (SIZE, SMTPUTF8, BODY=8BITMIME), or the name of the
    first one not recognised (every one is, after HELO rather than EHLO).
    """
    size, smtputf8, body_8bit = None, False, False
    for parameter in text.split():
        key, _, value = parameter.partition("=")
        key = key.upper()
        if key == "SIZE" and value.isdigit() and len(value) < 20 and esmtp:
            size = int(value)
        elif key == "BODY" and value.upper() in ("7BIT", "8BITMIME") and esmtp:
            body_8bit = value.upper() == "8BITMIME"
        elif key == "SMTPUTF8" and not value and esmtp:
            smtputf8 = True
        elif key == "AUTH" and esmtp:
            pass  # RFC 4954 5: the original submitter; nothing to do with it
        else:
            return key
    return size, smtputf8, body_8bit


def pass_through_reply(result: DeliveryResult, entry_id: str) -> tuple[int, str, str]:
    """
    The end-of-DATA reply of a pass-through listener, from the upstream's result.

    All delivered: 250, with the upstream's own reply (Exchange's carries its message id,
    what an operator searches Exchange's message trace for).  Handed back (nothing delivered; the engine dropped the entry):
    the first upstream reply, code and text verbatim (C{554 5.2.252 SendAsDenied; ...},
    C{451 4.7.500 ...}), and the device keeps the message.  Otherwise the relay kept the
    message (some recipients delivered, or the attempt did not finish), so the reply is
    250: a failure code would make the device send it again to those who have it.
    """
    failed = [r for r in result.recipients if r.outcome is not Outcome.DELIVERED]
    if not failed:
        said = result.recipients[0].reply if result.recipients else None
        if said is None or not said.text:
            return 250, "2.0.0", f"Ok: delivered as {entry_id}"
        return 250, "2.0.0", f"Ok: delivered as {entry_id}; upstream said {said}"
    if not result.handed_back:
        delivered = len(result.recipients) - len(failed)
        return 250, "2.0.0", (f"Ok: queued as {entry_id}; delivered to {delivered} of "
                              f"{len(result.recipients)}, upstream said {failed[0].reply}")
    reply = failed[0].reply
    enhanced = reply.enhanced or ""
    text = reply.text[len(enhanced):].lstrip() if enhanced else reply.text
    return reply.code, enhanced, text


class MailCommands(_Base):
    """MAIL, RCPT and DATA, for L{ESMTPServer}."""

    def do_MAIL(self, argument: str) -> "Deferred[None] | None":
        if self.helo is None:
            if not lenient_greeting(self.config, self.client_address):
                self.error(503, "5.5.1", "Send EHLO/HELO first")
                return None
            log.info("inbound client {client}: MAIL without HELO accepted (a device in "
                     "relay.allow_networks)", client=self.client_address)
            self.helo = ""
        if self.transaction is not None:
            self.error(503, "5.5.1", "Nested MAIL command")
            return None
        match = _MAIL.match(argument)
        if match is None:
            self.error(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
            return None
        sender = match.group(1) if match.group(1) is not None else match.group(2)
        parameters = mail_parameters(match.group(3) or "", self.esmtp)
        if isinstance(parameters, str):
            self.error(555, "5.5.4", f"MAIL FROM parameter {parameters} not recognised")
            return None
        size, smtputf8, body_8bit = parameters
        if size is not None and size > self.config.server.max_message_size:
            self.reply(552, "5.3.4", f"Message size exceeds fixed maximum message size "
                       f"of {self.config.server.max_message_size} bytes")
            return None
        # The handler decides whether (xrelay.inbound.handler); the routing, which account.
        # A handler that waits holds the pipelined commands behind MAIL until it decides.
        decision = decided(self.factory.handler.mail(session_of(self), sender),
                           self.clock, "MAIL FROM", self.client_address)
        if isinstance(decision, Deferred):
            return decision.addCallback(self._mail_decided, sender, size, smtputf8,
                                        body_8bit)
        self._mail_decided(decision, sender, size, smtputf8, body_8bit)
        return None

    def _mail_decided(self, refusal: Refusal | None, sender: str, size: int | None,
                      smtputf8: bool, body_8bit: bool) -> None:
        if self.state == CLOSED:
            return
        account = None
        if refusal is None:
            refusal, account = route_refusal(self.config, sender)
        if refusal is not None or account is None:
            log.warn("inbound client {client} user {user}: sender {sender} refused: "
                     "{reply}", client=self.client_address, sender=sender,
                     user=self.user.name if self.user else None, reply=str(refusal))
            assert refusal is not None
            self.factory.devices.refused(self, "mail", refusal.code, refusal.enhanced,
                                         refusal.text, sender=sender)
            self.refuse(refusal)
            return
        # The disk reserve (server.min_free_space): say so at MAIL already, as Postfix
        # does, rather than after the client has sent its recipients.
        shortfall = getattr(self.factory.spool, "shortfall", None)
        if shortfall is not None and shortfall() is not None:
            log.warn("inbound client {client}: sender {sender} refused: disk reserve "
                     "reached", client=self.client_address, sender=sender)
            self.reply(452, "4.3.1", "Insufficient system storage")
            return
        transaction = Transaction(sender, account, size, smtputf8, body_8bit)
        transaction.size_limit, transaction.size_why = route_size_limit(self.config,
                                                                        account)
        if size is not None and size > transaction.size_limit:
            log.warn("inbound client {client}: sender {sender} refused at MAIL: SIZE={size} "
                     "over what account {account} carries", client=self.client_address,
                     sender=sender, size=size, account=account.name)
            self.reply(552, "5.3.4", transaction.too_big_text())
            return
        self.transaction = transaction
        self.reply(250, "2.1.0", "Ok")

    def do_RCPT(self, argument: str) -> "Deferred[None] | None":
        transaction = self.transaction
        if transaction is None:
            self.error(503, "5.5.1", "Need MAIL command first")
            return None
        match = _RCPT.match(argument)
        if match is None:
            self.error(501, "5.5.4", "Syntax: RCPT TO:<address>")
            return None
        if match.group(3):
            self.error(555, "5.5.4", "RCPT TO parameters not recognised")
            return None
        recipient = match.group(1) if match.group(1) is not None else match.group(2)
        refusal = decided(
            self.factory.handler.rcpt(session_of(self), recipient,
                                      tuple(transaction.recipients)),
            self.clock, "RCPT TO", self.client_address)
        if isinstance(refusal, Deferred):
            # Later pipelined commands wait for it: their replies stay in order.
            return refusal.addCallback(self._rcpt_decided, transaction, recipient)
        self._rcpt_decided(refusal, transaction, recipient)
        return None

    def _rcpt_decided(self, refusal: Refusal | None, transaction: Transaction,
                      recipient: str) -> None:
        if self.state == CLOSED:
            return
        if refusal is not None:
            self.factory.devices.refused(self, "rcpt", refusal.code,
                                         refusal.enhanced, refusal.text)
            self.refuse(refusal)  # logged there, in summary once they repeat
            return
        if recipient.lower() not in (r.lower() for r in transaction.recipients):
            transaction.recipients.append(recipient)
        self.reply(250, "2.1.5", "Ok")

    def do_DATA(self, argument: str) -> None:
        transaction = self.transaction
        if transaction is None:
            self.error(503, "5.5.1", "Need MAIL command first")
            return
        if not transaction.recipients:
            self.error(554, "5.5.1", "No valid recipients")
            return
        if argument:
            self.error(501, "5.5.4", "Syntax: DATA")
            return
        envelope = Envelope(
            sender=transaction.sender,
            recipients=tuple(transaction.recipients),
            client_address=self.client_address,
            client_helo=self.helo or "",
            authenticated_user=self.user.name if self.user else None,
            account=transaction.account.name,
            received_at=time.time(),
            smtputf8=transaction.smtputf8,
            body_8bitmime=transaction.body_8bitmime,
        )
        try:
            transaction.message = self.factory.spool.incoming(envelope)
        except SpoolFull:
            log.warn("inbound message {message} from {client}: spool full",
                     message=transaction.id, client=self.client_address)
            self._drop_transaction("spool full")
            self.reply(452, "4.3.1", "Insufficient system storage")
            return
        except Exception:
            log.failure("inbound message {message}: cannot start spool entry",
                        message=transaction.id)
            self._drop_transaction("spool error")
            self.reply(451, "4.3.0", "Local error in processing, try again later")
            return
        transaction.lenient_end = bare_lf_ends_data(self.config, self.client_address,
                                                    self.user, self.factory.listener)
        self.state = DATA
        self.reply(354, "", "End data with <CR><LF>.<CR><LF>")
        header = received_header(
            helo=self.helo or "", client_address=self.client_address,
            hostname=self.config.server.hostname,
            keyword=protocol_keyword(self.esmtp, self.tls, self.user is not None,
                                     transaction.smtputf8),
            transaction_id=transaction.id, when=envelope.received_at)
        transaction.pending.append(header)
        transaction.pending_size += len(header)

    # -- DATA --------------------------------------------------------------------

    def _data_line(self, line: Line) -> "Deferred[Any] | None":
        transaction = self.transaction
        assert transaction is not None
        previous_crlf, transaction.previous_crlf = transaction.previous_crlf, line.crlf
        if line.overlong:
            self._refuse_message(552, "5.6.0", "Message refused: a line is longer than "
                                 f"{self.config.server.max_line_length} bytes "
                                 "(server.max_line_length; raise it for devices that send "
                                 "long unbroken lines, such as base64 without line "
                                 "breaks)")
            return None
        if ends_data(line, previous_crlf, transaction.lenient_end):
            return self._end_of_data(lenient=not ends_data(line, previous_crlf, False))
        if line.content == b".":
            transaction.dot_lookalikes += 1  # an end only for a lenient reading
        if not line.crlf or b"\r" in line.content:
            transaction.bare_line_ends += 1
        if transaction.refusal is not None:
            return None  # reading to the end of the message, keeping nothing
        data = data_line_bytes(line)
        if not transaction.eight_bit and not data.isascii():
            transaction.eight_bit = True
        if not transaction.headers.done:
            data = feed_header_lines(transaction.headers, data, self._missing_fields)
        transaction.received += len(data)
        if transaction.received > transaction.size_limit:
            self._refuse_message(552, "5.3.4", transaction.too_big_text())
            return None
        transaction.pending.append(data)
        transaction.pending_size += len(data)
        if transaction.pending_size >= WRITE_BATCH:
            self._flush()
        return None

    def _data_block(self, block: bytes) -> None:
        """
        Consecutive plain DATA lines (L{LineBuffer.plain_lines}): CRLF-terminated, none
        stuffed, none a dot line, so stored exactly as received; what L{_data_line}
        would do for each, at the cost of one call.
        """
        transaction = self.transaction
        assert transaction is not None
        transaction.previous_crlf = True
        if transaction.refusal is not None:
            return  # reading to the end of the message, keeping nothing
        if not transaction.eight_bit and not block.isascii():
            transaction.eight_bit = True
        if not transaction.headers.done:
            block = feed_header_lines(transaction.headers, block, self._missing_fields)
        transaction.received += len(block)
        if transaction.received > transaction.size_limit:
            self._refuse_message(552, "5.3.4", transaction.too_big_text())
            return
        transaction.pending.append(block)
        transaction.pending_size += len(block)
        if transaction.pending_size >= WRITE_BATCH:
            self._flush()

    def _flush(self) -> None:
        """Hand the gathered lines to the spool."""
        transaction = self.transaction
        if transaction is None or transaction.message is None or not transaction.pending:
            return
        chunk = b"".join(transaction.pending)
        transaction.pending.clear()
        transaction.pending_size = 0
        try:
            transaction.message.write(chunk)
        except SpoolFull:
            log.warn("inbound message {message} from {client}: spool full while "
                     "receiving", message=transaction.id, client=self.client_address)
            self._refuse_message(452, "4.3.1", "Insufficient system storage")
        except Exception:
            log.failure("inbound message {message}: spool write failed",
                        message=transaction.id)
            self._refuse_message(451, "4.3.0", "Local error in processing, try again "
                                 "later")

    def _refuse_message(self, code: int, enhanced: str, text: str) -> None:
        """Keep reading until the real end of DATA, then refuse; store nothing more."""
        transaction = self.transaction
        assert transaction is not None
        if transaction.refusal is None:
            transaction.refusal = (code, enhanced, text)
            transaction.pending.clear()
            transaction.pending_size = 0
            if transaction.message is not None:
                transaction.message.abort()
                transaction.message = None

    def _missing_fields(self) -> bytes:
        """RFC 6409 section 8: the Date: and Message-ID: this message lacks."""
        transaction = self.transaction
        assert transaction is not None
        return missing_fields(transaction.headers, self.config.server.hostname,
                              transaction.id)

    def _data_failed(self) -> None:
        """
        A bug while handling a DATA line: the transaction ends with 451 4.3.0 at its
        end of data and nothing of it is kept (a 250 only for a complete message).
        """
        transaction = self.transaction
        if transaction is None:
            # DATA with no transaction: nothing to keep or refuse; back to commands.
            self.state = COMMAND
            self.reply(451, "4.3.0", "Local error in processing, try again later")
            return
        log.error("inbound message {message} from {client}: internal error while "
                  "receiving DATA; answering 451 4.3.0 at its end, nothing kept",
                  message=transaction.id, client=self.client_address)
        try:
            self._refuse_message(451, "4.3.0", "Local error in processing, try again "
                                 "later")
        except Exception:
            log.failure("inbound message {message}: cannot abort the spool entry",
                        message=transaction.id)
            transaction.message = None

    def _data_timeout_hint(self) -> str | None:
        """Why DATA has not ended, when a strict reading of bare line ends is the cause."""
        transaction = self.transaction
        if transaction is None or transaction.lenient_end:
            return None  # (its counts are zero before DATA)
        return strict_end_of_data_hint(transaction.dot_lookalikes,
                                       transaction.bare_line_ends)

    def _end_of_data(self, lenient: bool = False) -> "Deferred[Any] | None":
        transaction = self.transaction
        assert transaction is not None
        try:
            if transaction.refusal is None:
                fields = header_block_never_ended(transaction.headers, self._missing_fields)
                if fields:
                    transaction.pending.append(fields)
                    transaction.received += len(fields)
            if transaction.eight_bit and transaction.message is not None:
                transaction.message.envelope = attrs.evolve(
                    transaction.message.envelope, body_8bitmime=True)
        except Exception:
            log.failure("inbound message {message}: error completing the message",
                        message=transaction.id)
            self._data_failed()
        self._flush()
        self.state = COMMAND
        self.transaction = None
        if lenient:
            log.info("inbound message {message} from {client}: DATA ended by a \".\" line "
                     "with bare LF line ends, accepted from a device in "
                     "relay.allow_networks (relay.bare_lf_end_of_data = \"trusted\")",
                     message=transaction.id, client=self.client_address)
        if transaction.bare_line_ends:
            log.info("inbound message {message} from {client}: {count} bare CR/LF line "
                     "ends normalised to CRLF", message=transaction.id,
                     client=self.client_address, count=transaction.bare_line_ends)
        if transaction.refusal is not None or transaction.message is None:
            code, enhanced, text = transaction.refusal or (
                451, "4.3.0", "Local error in processing, try again later")
            log.warn("inbound message {message} from {client} sender {sender} refused: "
                     "{code} {enhanced} {text}", message=transaction.id,
                     client=self.client_address, sender=transaction.sender, code=code,
                     enhanced=enhanced, text=text)
            self.factory.devices.refused(self, "data", code, enhanced, text,
                                         sender=transaction.sender)
            self.reply(code, enhanced, text)
            return None
        message = transaction.message
        transaction.message = None
        unsent = unsplittable(transaction.account, transaction.received,
                              transaction.headers.first("content-type"))
        if unsent is not None:
            log.warn("inbound message {message} from {client} refused: {reason}",
                     message=transaction.id, client=self.client_address, reason=unsent)
            message.abort()
            self.reply(552, "5.3.4", unsent)
            return None
        refusal = message_refusal(self.factory.handler, session_of(self, transaction),
                                  transaction.headers, message, transaction.received,
                                  self.clock)
        if isinstance(refusal, Deferred):
            return refusal.addCallback(self._message_decided, transaction, message)
        return self._message_decided(refusal, transaction, message)

    def _message_decided(self, refusal: Refusal | None, transaction: Transaction,
                         message: IIncomingMessage) -> "Deferred[Any] | None":
        if self.state == CLOSED:
            message.abort()
            return None
        if refusal is not None:
            log.warn("inbound message {message} from {client} user {user} refused: "
                     "{reply}", message=transaction.id, client=self.client_address,
                     user=self.user.name if self.user else None, reply=str(refusal))
            message.abort()
            self.factory.devices.refused(self, "data", refusal.code, refusal.enhanced,
                                         refusal.text, sender=transaction.sender)
            self.refuse(refusal)
            return None
        d = defer.maybeDeferred(message.commit)
        d.addCallbacks(self._committed, self._commit_failed,
                       callbackArgs=(transaction,), errbackArgs=(transaction, message))
        return d

    def _commit_failed(self, failure: Failure, transaction: Transaction,
                       message: IIncomingMessage) -> None:
        try:
            message.abort()
        except Exception:
            pass  # a failed commit has already removed what it could
        if failure.check(SpoolFull):
            log.warn("inbound message {message} from {client}: spool full at commit",
                     message=transaction.id, client=self.client_address)
            code, enhanced, text = 452, "4.3.1", "Insufficient system storage"
        else:
            log.failure("inbound message {message}: commit failed", failure,
                        message=transaction.id)
            code, enhanced, text = 451, "4.3.0", "Local error in processing, try again later"
        if self.state != CLOSED:
            self.reply(code, enhanced, text)

    def _committed(self, entry_id: str, transaction: Transaction) -> "Deferred[Any] | None":
        self.factory.service.acceptance_log.queued(
            transaction.id, entry_id, self.client_address, transaction.sender,
            self.user.name if self.user else None, transaction.account.name,
            len(transaction.recipients), transaction.received)
        self.factory.history.received(AcceptedMessage.of(entry_id, transaction, self))
        self.conduct.message_accepted()
        self.factory.events.accepted(transaction.account.name)
        self.factory.devices.accepted(self, transaction.sender)
        if not self.factory.listener.pass_through:
            if self.state != CLOSED:
                self.reply(250, "2.0.0", f"Ok: queued as {entry_id}")
            self._submit(entry_id)
            return None
        d = defer.maybeDeferred(self.factory.delivery.deliver_now, entry_id)

        def answered(result: DeliveryResult) -> None:
            code, enhanced, text = pass_through_reply(result, entry_id)
            log.info("inbound message {message} entry {entry} pass-through upstream "
                     "reply: {code} {enhanced} {text}", message=transaction.id,
                     entry=entry_id, code=code, enhanced=enhanced, text=text)
            if self.state != CLOSED:
                self.reply(code, enhanced, text)

        def failed(failure: Failure) -> None:
            # The entry is safely queued; the delivery engine retries it as usual.
            log.failure("inbound message {message} entry {entry}: pass-through delivery "
                        "failed; left queued", failure, message=transaction.id,
                        entry=entry_id)
            if self.state != CLOSED:
                self.reply(250, "2.0.0", f"Ok: queued as {entry_id}")
            self._submit(entry_id)

        return d.addCallbacks(answered, failed)

    def _submit(self, entry_id: str) -> None:
        """
        Wake the delivery engine.  The message is already durable and acknowledged, so
        a failure here must not turn into an error reply (the client would send the
        message again); the spool's own scan finds the entry anyway.
        """
        try:
            self.factory.delivery.submitted(entry_id)
        except Exception:
            log.failure("inbound: delivery.submitted({entry}) failed; the entry stays "
                        "queued", entry=entry_id)

    def _drop_transaction(self, why: str) -> None:
        hint = self._data_timeout_hint()  # a device waiting on a bare-LF end: say so
        if hint:
            why = f"{why}; {hint}"
        transaction, self.transaction = self.transaction, None
        if self.state == DATA:
            self.state = COMMAND
        if transaction is not None and transaction.message is not None:
            log.info("inbound message {message} from {client} abandoned: {why}",
                     message=transaction.id, client=self.client_address, why=why)
            transaction.message.abort()
            transaction.message = None


