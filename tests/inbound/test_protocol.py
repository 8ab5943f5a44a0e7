"""
The SMTP conversation over a real loopback socket: each command's exact reply, the
message as it reaches the spool, and the hand-off to delivery.
"""

from __future__ import annotations

import re

import pytest_twisted

from tests.inbound.harness import connect, ehlo, make_config
from xrelay.config import ListenerConfig
from xrelay.envelope import DeliveryResult, Outcome, RecipientResult, Reply
from xrelay.inbound.testing import MemorySpool, RecordingDelivery
from xrelay.testing.spool import FIRST_ID, memory_entry_id


@pytest_twisted.inlineCallbacks
def test_greeting_and_ehlo_without_tls(relay):
    r = yield relay(make_config())
    client = yield connect(r.port)
    assert client.greeting == "220 relay.test ESMTP xrelay ready"
    reply = yield client.command(b"EHLO printer.lan")
    # No certificate: no STARTTLS; AUTH needs TLS by default, so it is not offered.
    assert reply.split("\n") == [
        "250-relay.test", "250-PIPELINING", "250-SIZE 36700160", "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES", "250-SMTPUTF8", "250 HELP"]


@pytest_twisted.inlineCallbacks
def test_ehlo_with_tls_offers_starttls_and_auth_only_after_it(relay, certs):
    r = yield relay(make_config(certs))
    client = yield connect(r.port)
    reply = yield ehlo(client)
    assert "250-STARTTLS" in reply.split("\n")
    assert "AUTH" not in reply
    assert (yield client.command(b"STARTTLS")) == "220 2.0.0 Ready to start TLS"
    client.start_tls(certs)
    reply = yield ehlo(client)
    assert "STARTTLS" not in reply
    assert "250-AUTH PLAIN LOGIN" in reply.split("\n")
    assert "CRAM-MD5" not in reply


@pytest_twisted.inlineCallbacks
def test_simple_commands(relay):
    r = yield relay(make_config())
    client = yield connect(r.port)
    assert (yield client.command(b"HELO printer")) == "250 relay.test"
    assert (yield client.command(b"NOOP")) == "250 2.0.0 Ok"
    assert (yield client.command(b"VRFY root")) == (
        "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery")
    assert (yield client.command(b"EXPN staff")) == "502 5.5.1 EXPN not available"
    help_reply = yield client.command(b"HELP")
    assert help_reply.startswith("214-2.0.0 Commands: EHLO")
    assert (yield client.command(b"RSET")) == "250 2.0.0 Ok"
    assert (yield client.command(b"FOO bar")) == "500 5.5.2 Command not recognised"
    assert (yield client.command(b"BDAT 10")) == "502 5.5.1 BDAT not available; use DATA"
    assert (yield client.command(b"STARTTLS")) == "502 5.5.1 STARTTLS not available"
    assert (yield client.command(b"QUIT")) == "221 2.0.0 Bye"
    yield client.wait_closed()


@pytest_twisted.inlineCallbacks
def test_sequence_errors(relay):
    r = yield relay(make_config())
    client = yield connect(r.port)
    # MAIL without HELO and an empty EHLO: accepted from relay.allow_networks only,
    # see tests/inbound/test_devices.py.
    yield ehlo(client)
    assert (yield client.command(b"RCPT TO:<b@example.org>")) == (
        "503 5.5.1 Need MAIL command first")
    assert (yield client.command(b"DATA")) == "503 5.5.1 Need MAIL command first"
    assert (yield client.command(b"MAIL FROM:<a@example.com>")) == "250 2.1.0 Ok"
    assert (yield client.command(b"MAIL FROM:<a@example.com>")) == (
        "503 5.5.1 Nested MAIL command")
    assert (yield client.command(b"DATA")) == "554 5.5.1 No valid recipients"
    assert (yield client.command(b"MAIL FROM:a@example.com XYZ=1")) == (
        "503 5.5.1 Nested MAIL command")
    assert (yield client.command(b"RSET")) == "250 2.0.0 Ok"
    assert (yield client.command(b"MAIL FROM:<a@example.com> XYZ=1")) == (
        "555 5.5.4 MAIL FROM parameter XYZ not recognised")
    assert (yield client.command(b"MAIL TO:<a@example.com>")) == (
        "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")


@pytest_twisted.inlineCallbacks
def test_message_reaches_spool_with_received_header_then_250(relay):
    r = yield relay(make_config())
    client = yield connect(r.port)
    yield ehlo(client, b"printer.lan")
    assert (yield client.command(b"MAIL FROM:<scan@example.com> BODY=8BITMIME SIZE=100"
                                 )) == "250 2.1.0 Ok"
    assert (yield client.command(b"RCPT TO:<alice@example.org>")) == "250 2.1.5 Ok"
    assert (yield client.command(b"RCPT TO:<bob@example.net>")) == "250 2.1.5 Ok"
    assert (yield client.command(b"DATA")) == "354 End data with <CR><LF>.<CR><LF>"
    reply = yield client.command(b"Subject: scan\r\n\r\n..leading dot\r\nbody\r\n.\r\n")
    assert reply == "250 2.0.0 Ok: queued as " + FIRST_ID
    assert r.delivery.submissions == list(r.spool.stored)
    [(envelope, data)] = r.spool.messages()
    assert envelope.sender == "scan@example.com"
    assert envelope.recipients == ("alice@example.org", "bob@example.net")
    assert envelope.client_address == "127.0.0.1"
    assert envelope.client_helo == "printer.lan"
    assert envelope.authenticated_user is None
    assert envelope.account == "main"
    assert envelope.body_8bitmime is True
    header, rest = data.split(b"\r\n", 3)[:3], data.split(b"\r\n", 3)[3]
    assert header[0] == b"Received: from printer.lan ([127.0.0.1])"
    assert re.fullmatch(rb"\tby relay.test \(xrelay\) with ESMTP id [0-9a-f]{12};", header[1])
    assert header[2].startswith(b"\t") and header[2].endswith(b" GMT")
    # RFC 6409 section 8: the missing Date: and Message-ID: are added at the end of the
    # message's own header block (see tests/inbound/test_submission_fields.py).
    assert re.fullmatch(rb"Subject: scan\r\nDate: [^\r\n]+\r\nMessage-ID: "
                        rb"<[0-9a-f.]+@relay\.test>\r\n\r\n\.leading dot\r\nbody\r\n", rest)
    # The connection goes on: a second transaction.
    assert (yield client.command(b"MAIL FROM:<>")) == "250 2.1.0 Ok"


@pytest_twisted.inlineCallbacks
def test_declared_size_too_big_refused_at_mail_from(relay):
    r = yield relay(make_config(max_message_size=2000))
    client = yield connect(r.port)
    reply = yield ehlo(client)
    assert "250-SIZE 2000" in reply.split("\n")
    assert (yield client.command(b"MAIL FROM:<a@example.com> SIZE=2001")) == (
        "552 5.3.4 Message size exceeds fixed maximum message size of 2000 bytes")
    assert (yield client.command(b"MAIL FROM:<a@example.com> SIZE=2000")) == "250 2.1.0 Ok"


@pytest_twisted.inlineCallbacks
def test_oversized_data_refused_at_end_and_connection_stays_usable(relay):
    r = yield relay(make_config(max_message_size=2000))
    client = yield connect(r.port)
    yield ehlo(client)
    yield client.command(b"MAIL FROM:<a@example.com>")
    yield client.command(b"RCPT TO:<b@example.org>")
    assert (yield client.command(b"DATA")).startswith("354")
    client.send(b"x" * 998 + b"\r\n")
    client.send(b"y" * 998 + b"\r\n")
    client.send(b"z" * 998 + b"\r\n")
    assert (yield client.command(b"QUIT-looking line\r\n.\r\n")) == (
        "552 5.3.4 Message too big; the limit is 2000 bytes")
    assert r.spool.stored == {}
    assert r.spool.aborted and r.spool.aborted[0].data == b""
    # Still usable: a small message goes through.
    yield client.command(b"MAIL FROM:<a@example.com>")
    yield client.command(b"RCPT TO:<b@example.org>")
    yield client.command(b"DATA")
    assert (yield client.command(b"small\r\n.\r\n")) == "250 2.0.0 Ok: queued as " + FIRST_ID


@pytest_twisted.inlineCallbacks
def test_too_many_recipients_452_then_the_rest_still_sent(relay):
    r = yield relay(make_config(max_recipients=2))
    client = yield connect(r.port)
    yield ehlo(client)
    yield client.command(b"MAIL FROM:<a@example.com>")
    assert (yield client.command(b"RCPT TO:<r1@example.org>")) == "250 2.1.5 Ok"
    assert (yield client.command(b"RCPT TO:<r2@example.org>")) == "250 2.1.5 Ok"
    assert (yield client.command(b"RCPT TO:<r3@example.org>")) == (
        "452 4.5.3 Too many recipients; at most 2 per message, send the rest in another "
        "message")
    yield client.command(b"DATA")
    assert (yield client.command(b"hi\r\n.\r\n")).startswith("250 2.0.0")
    [(envelope, _)] = r.spool.messages()
    assert envelope.recipients == ("r1@example.org", "r2@example.org")


@pytest_twisted.inlineCallbacks
def test_rset_in_the_middle_forgets_the_transaction(relay):
    r = yield relay(make_config())
    client = yield connect(r.port)
    yield ehlo(client)
    yield client.command(b"MAIL FROM:<a@example.com>")
    yield client.command(b"RCPT TO:<b@example.org>")
    assert (yield client.command(b"RSET")) == "250 2.0.0 Ok"
    assert (yield client.command(b"DATA")) == "503 5.5.1 Need MAIL command first"


@pytest_twisted.inlineCallbacks
def test_smtputf8_addresses(relay):
    r = yield relay(make_config())
    client = yield connect(r.port)
    yield ehlo(client)
    assert (yield client.command("MAIL FROM:<jörg@example.com> SMTPUTF8".encode())) == (
        "250 2.1.0 Ok")
    assert (yield client.command("RCPT TO:<zoë@exämple.org>".encode())) == "250 2.1.5 Ok"
    yield client.command(b"DATA")
    assert (yield client.command(b"hi\r\n.\r\n")).startswith("250 2.0.0")
    [(envelope, _)] = r.spool.messages()
    assert envelope.smtputf8 and envelope.sender == "jörg@example.com"
    assert envelope.recipients == ("zoë@exämple.org",)


@pytest_twisted.inlineCallbacks
def test_spool_full_at_write_gives_452_and_nothing_kept(relay):
    spool = MemorySpool(full_after=100)
    r = yield relay(make_config(), spool=spool)
    client = yield connect(r.port)
    yield ehlo(client)
    yield client.command(b"MAIL FROM:<a@example.com>")
    yield client.command(b"RCPT TO:<b@example.org>")
    yield client.command(b"DATA")
    assert (yield client.command(b"x" * 500 + b"\r\n.\r\n")) == (
        "452 4.3.1 Insufficient system storage")
    assert spool.stored == {} and len(spool.aborted) == 1
    assert r.delivery.submissions == []
    assert (yield client.command(b"NOOP")) == "250 2.0.0 Ok"


@pytest_twisted.inlineCallbacks
def test_spool_full_at_commit_and_at_start(relay):
    from xrelay.inbound import SpoolFull

    spool = MemorySpool(fail_commit=SpoolFull("quota"))
    r = yield relay(make_config(), spool=spool)
    client = yield connect(r.port)
    yield ehlo(client)
    yield client.command(b"MAIL FROM:<a@example.com>")
    yield client.command(b"RCPT TO:<b@example.org>")
    yield client.command(b"DATA")
    assert (yield client.command(b"hi\r\n.\r\n")) == "452 4.3.1 Insufficient system storage"
    assert len(spool.aborted) == 1 and r.delivery.submissions == []
    spool.fail_commit, spool.full_at_incoming = None, True
    yield client.command(b"MAIL FROM:<a@example.com>")
    yield client.command(b"RCPT TO:<b@example.org>")
    assert (yield client.command(b"DATA")) == "452 4.3.1 Insufficient system storage"
    assert (yield client.command(b"NOOP")) == "250 2.0.0 Ok"


@pytest_twisted.inlineCallbacks
def test_pass_through_answers_with_the_upstream_reply(relay):
    upstream = Reply(554, "5.2.252 SendAsDenied; relay@example.com not allowed to send "
                     "as a@example.com; STOREDRV.Submission.Exception")
    delivery = RecordingDelivery(result=DeliveryResult(
        (RecipientResult("b@example.org", Outcome.PERMANENT, upstream),), handed_back=True))
    config = make_config(listen=(ListenerConfig("tcp:0:interface=127.0.0.1",
                                                pass_through=True),))
    r = yield relay(config, delivery=delivery)
    client = yield connect(r.port)
    yield ehlo(client)
    yield client.command(b"MAIL FROM:<a@example.com>")
    yield client.command(b"RCPT TO:<b@example.org>")
    yield client.command(b"DATA")
    assert (yield client.command(b"hi\r\n.\r\n")) == (
        "554 5.2.252 SendAsDenied; relay@example.com not allowed to send as "
        "a@example.com; STOREDRV.Submission.Exception")
    assert delivery.passed_through == [FIRST_ID]
    delivery.result = None
    yield client.command(b"MAIL FROM:<a@example.com>")
    yield client.command(b"RCPT TO:<b@example.org>")
    yield client.command(b"DATA")
    # (issue 23: followed by the upstream's own reply, as the README says)
    assert (yield client.command(b"hi\r\n.\r\n")) == (
        "250 2.0.0 Ok: delivered as " + memory_entry_id(2) + "; upstream said 250 2.0.0 OK")


@pytest_twisted.inlineCallbacks
def test_unexpected_spool_errors_give_451_not_a_traceback(relay):
    spool = MemorySpool(fail_commit=RuntimeError("disk on fire"))
    r = yield relay(make_config(), spool=spool)
    client = yield connect(r.port)
    yield ehlo(client)
    yield client.command(b"MAIL FROM:<a@example.com>")
    yield client.command(b"RCPT TO:<b@example.org>")
    yield client.command(b"DATA")
    assert (yield client.command(b"hi\r\n.\r\n")) == (
        "451 4.3.0 Local error in processing, try again later")
    assert len(spool.aborted) == 1 and r.delivery.submissions == []
    assert (yield client.command(b"NOOP")) == "250 2.0.0 Ok"


def test_pass_through_reply_rules():
    from xrelay.inbound.protocol import pass_through_reply

    ok = RecipientResult("a@example.org", Outcome.DELIVERED, Reply(250, "2.6.0 Queued"))
    later = RecipientResult("b@example.org", Outcome.TEMPORARY,
                            Reply(451, "4.7.500 Server busy. Please try again later"))
    assert pass_through_reply(DeliveryResult((ok,)), "e1") == (
        250, "2.0.0", "Ok: delivered as e1; upstream said 250 2.6.0 Queued")
    # Nothing delivered and handed back: the device hears the upstream and keeps it.
    assert pass_through_reply(DeliveryResult((later,), handed_back=True), "e1") == (
        451, "4.7.500", "Server busy. Please try again later")
    # Nothing delivered but the relay kept it (the attempt did not finish): 250.
    assert pass_through_reply(DeliveryResult((later,)), "e1") == (
        250, "2.0.0", "Ok: queued as e1; delivered to 0 of 1, upstream said 451 4.7.500 "
        "Server busy. Please try again later")
    # Some delivered: a 4xx/5xx would make the device resend to those too.
    assert pass_through_reply(DeliveryResult((ok, later)), "e1") == (
        250, "2.0.0", "Ok: queued as e1; delivered to 1 of 2, upstream said 451 4.7.500 "
        "Server busy. Please try again later")
    bare = RecipientResult("c@example.org", Outcome.PERMANENT, Reply(550, "No such user"))
    assert pass_through_reply(DeliveryResult((bare,), handed_back=True), "e1") == (
        550, "", "No such user")


@pytest_twisted.inlineCallbacks
def test_pass_through_delivery_error_leaves_the_message_queued(relay):
    delivery = RecordingDelivery(result=RuntimeError("engine stopped"))
    config = make_config(listen=(ListenerConfig("tcp:0:interface=127.0.0.1",
                                                pass_through=True),))
    r = yield relay(config, delivery=delivery)
    client = yield connect(r.port)
    yield ehlo(client)
    yield client.command(b"MAIL FROM:<a@example.com>")
    yield client.command(b"RCPT TO:<b@example.org>")
    yield client.command(b"DATA")
    assert (yield client.command(b"hi\r\n.\r\n")) == "250 2.0.0 Ok: queued as " + FIRST_ID
    assert delivery.passed_through == [FIRST_ID] and delivery.submissions == [FIRST_ID]


@pytest_twisted.inlineCallbacks
def test_eight_bit_body_stored_byte_for_byte(relay):
    r = yield relay(make_config())
    client = yield connect(r.port)
    yield ehlo(client)
    yield client.command(b"MAIL FROM:<a@example.com> BODY=8BITMIME")
    yield client.command(b"RCPT TO:<b@example.org>")
    yield client.command(b"DATA")
    body = b"caf\xc3\xa9 \xe9\xff\x80 latin-1 and raw\r\n\tindented\r\n"
    assert (yield client.command(body + b".\r\n")).startswith("250 2.0.0")
    [(envelope, data)] = r.spool.messages()
    assert envelope.body_8bitmime and data.endswith(b"\r\n" + body)
