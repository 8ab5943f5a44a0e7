"""
The Exchange-like SMTP server driven by Python's smtplib over real STARTTLS verified
against the sandbox CA, with tokens from the sandbox identity platform.
"""

from __future__ import annotations

import smtplib
import socket
import ssl

import pytest
import pytest_twisted
from twisted.internet import threads

from xrelay.sandbox import DEFAULT_MAILBOX, Sandbox

from .conftest import app_token, smtp_connect, xoauth2

MESSAGE = b"From: relay@sandbox.example\r\nTo: bob@example.com\r\nSubject: hi\r\nMessage-ID: <m1@test>\r\n\r\nhello\r\n.dot line\r\n"


def _send(sb: Sandbox, token: str, sender: str = DEFAULT_MAILBOX, recipients: tuple[str, ...] = ("bob@example.com",),
          data: bytes = MESSAGE, count: int = 1, user: str = DEFAULT_MAILBOX) -> list[tuple[int, bytes]]:
    """Send C{count} messages over one connection; the replies to the end of data."""
    client = smtp_connect(sb)
    try:
        code, text = client.docmd("AUTH", "XOAUTH2 " + xoauth2(user, token))
        assert (code, text) == (235, b"2.7.0 Authentication successful"), (code, text)
        replies = []
        for _ in range(count):
            assert client.mail(sender)[0] == 250
            for r in recipients:
                assert client.rcpt(r)[0] == 250
            replies.append(client.data(data))
        client.quit()
        return replies
    finally:
        client.close()


@pytest_twisted.inlineCallbacks
def test_banner_and_ehlo_before_and_after_starttls(sandbox: Sandbox):
    def talk():
        client = smtplib.SMTP(sandbox.smtp_host, sandbox.smtp_port, timeout=10)
        before = client.ehlo("client.test")
        client.starttls(context=ssl.create_default_context(cafile=sandbox.ca_file))
        after = client.ehlo("client.test")
        client.quit()
        return before, after

    before, after = yield threads.deferToThread(talk)
    assert before[1].decode().splitlines()[1:] == [
        "SIZE 157286400", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES", "STARTTLS", "8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8",
    ]
    assert after[1].decode().splitlines()[1:] == [
        "SIZE 157286400", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES", "AUTH LOGIN XOAUTH2", "8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8",
    ]
    replies = sandbox.exchange.transcripts[0].replies
    assert replies[0].startswith("220 SB1PR01CA0001.outlook.office365.com Microsoft ESMTP MAIL Service ready at ")


@pytest_twisted.inlineCallbacks
def test_xoauth2_app_only_delivers_exact_bytes_and_redacts_the_token(sandbox: Sandbox):
    token = app_token(sandbox)
    replies = yield threads.deferToThread(_send, sandbox, token, "printer@anywhere.example", count=3)
    for code, text in replies:
        assert code == 250
        assert text.decode().startswith("2.6.0 <m1@test> [InternalId=")
        assert text.decode().endswith("Hostname=SB1PR01MB0001.sandbox.prod.outlook.com] Queued mail for delivery")
    assert len(sandbox.mailbox.messages) == 3
    message = sandbox.mailbox.messages[0]
    # smtplib dot-stuffs ".dot line"; the server must un-stuff it.
    assert message.data == MESSAGE
    assert (message.mail_from, message.rcpt_to, message.mailbox, message.connection) == (
        "printer@anywhere.example", ("bob@example.com",), DEFAULT_MAILBOX, 1,
    )
    stored = sandbox.directory.child("mailbox").child("bob@example.com").child(message.id + ".eml")
    assert stored.getContent() == MESSAGE
    transcript = sandbox.exchange.transcripts[0]
    assert sandbox.exchange.connections_count == 1 and transcript.auth_count == 1 and transcript.messages_accepted == 3
    assert "AUTH XOAUTH2 <redacted>" in transcript.commands
    assert not any(token in line or token[:40] in line for _, line in transcript.lines)


@pytest_twisted.inlineCallbacks
def test_xoauth2_two_step_and_delegated_token(sandbox: Sandbox):
    app = sandbox.identity.register_app("contoso.onmicrosoft.com", public_client=True)
    sandbox.identity.add_user("contoso.onmicrosoft.com", "alice@contoso.com", "pw")
    flow = sandbox.identity.device_authorization("contoso.onmicrosoft.com", {"client_id": app.client_id, "scope": "https://outlook.office.com/SMTP.Send"}).body
    sandbox.identity.approve_device_code(flow["user_code"], "alice@contoso.com")
    token = sandbox.identity.token("contoso.onmicrosoft.com", {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "client_id": app.client_id, "device_code": flow["device_code"]}).body["access_token"]

    def talk():
        client = smtp_connect(sandbox)
        first = client.docmd("AUTH", "XOAUTH2")
        second = client.docmd(xoauth2("alice@contoso.com", token))
        mail = client.mail("alice@contoso.com")
        client.quit()
        return first, second, mail

    first, second, mail = yield threads.deferToThread(talk)
    assert first == (334, b"")
    assert second == (235, b"2.7.0 Authentication successful")
    assert mail[0] == 250
    assert sandbox.exchange.transcripts[0].commands[-4:-2] == ["AUTH XOAUTH2", "<redacted>"]


@pytest_twisted.inlineCallbacks
def test_rejected_tokens_get_535_and_mail_before_auth_530(sandbox: Sandbox):
    good = app_token(sandbox)
    graph = app_token(sandbox, "https://graph.microsoft.com")

    def talk():
        client = smtp_connect(sandbox)
        results = [client.mail("x@example.com")]
        results.append(client.docmd("AUTH", "XOAUTH2 " + xoauth2(DEFAULT_MAILBOX, "not-a-token")))
        results.append(client.docmd("AUTH", "XOAUTH2 " + xoauth2(DEFAULT_MAILBOX, graph)))
        results.append(client.docmd("AUTH", "XOAUTH2 " + xoauth2("someone.else@sandbox.example", good)))
        sandbox.identity.expire_access_tokens()
        results.append(client.docmd("AUTH", "XOAUTH2 " + xoauth2(DEFAULT_MAILBOX, good)))
        client.quit()
        return results

    results = yield threads.deferToThread(talk)
    host = sandbox.exchange.hostname
    assert results[0] == (530, f"5.7.57 Client not authenticated to send mail. [{host}]".encode())
    for r in results[1:]:
        assert r == (535, f"5.7.3 Authentication unsuccessful [{host}]".encode())


@pytest_twisted.inlineCallbacks
def test_auth_is_not_offered_before_starttls(sandbox: Sandbox):
    def talk():
        client = smtplib.SMTP(sandbox.smtp_host, sandbox.smtp_port, timeout=10)
        client.ehlo("x")
        reply = client.docmd("AUTH", "XOAUTH2 " + xoauth2(DEFAULT_MAILBOX, "t"))
        client.quit()
        return reply

    assert (yield threads.deferToThread(talk)) == (504, f"5.7.4 Unrecognized authentication type [{sandbox.exchange.hostname}]".encode())


@pytest_twisted.inlineCallbacks
def test_commands_pipelined_after_starttls_are_discarded(sandbox: Sandbox):
    def talk():
        sock = socket.create_connection(("127.0.0.1", sandbox.smtp_port), timeout=10)
        f = sock.makefile("rb")
        f.readline()
        sock.sendall(b"EHLO x\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        sock.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.com>\r\n")
        reply = f.readline()
        tls = ssl.create_default_context(cafile=sandbox.ca_file).wrap_socket(sock, server_hostname="localhost")
        tls.sendall(b"NOOP\r\n")
        after = tls.recv(1024)
        tls.close()
        return reply, after

    reply, after = yield threads.deferToThread(talk)
    assert reply == b"220 2.0.0 SMTP server ready\r\n"
    assert after == b"250 2.0.0 OK\r\n"
    assert "MAIL FROM:<evil@example.com>" not in sandbox.exchange.transcripts[0].commands


@pytest_twisted.inlineCallbacks
def test_send_as_denied_at_end_of_data(sandbox: Sandbox):
    app = sandbox.identity.register_app("sandbox.onmicrosoft.com")
    sandbox.exchange.grant_app_mailbox(app.client_id, "scanner@sandbox.example")
    sandbox.exchange.grant_send_as("scanner@sandbox.example", "*@scans.example")
    token = sandbox.identity.token("sandbox.onmicrosoft.com", {"grant_type": "client_credentials", "client_id": app.client_id, "client_secret": app.client_secret, "scope": "https://outlook.office365.com/.default"}).body["access_token"]

    def talk(sender, header_from):
        client = smtp_connect(sandbox)
        client.docmd("AUTH", "XOAUTH2 " + xoauth2("scanner@sandbox.example", token))
        client.mail(sender)
        client.rcpt("bob@example.com")
        reply = client.data(f"From: {header_from}\r\nSubject: x\r\n\r\nbody\r\n".encode())
        client.quit()
        return reply

    denied = yield threads.deferToThread(talk, "ceo@example.com", "ceo@example.com")
    assert denied[0] == 554
    text = denied[1].decode()
    assert text.startswith(
        "5.2.252 SendAsDenied; scanner@sandbox.example not allowed to send as ceo@example.com; "
        "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; "
        "Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message."
    )
    assert text.endswith("[EndDiagnosticData] [Hostname=SB1PR01MB0001.sandbox.prod.outlook.com]")
    allowed = yield threads.deferToThread(talk, "desk1@scans.example", "Desk 1 <desk1@scans.example>")
    assert allowed[0] == 250
    assert len(sandbox.mailbox.messages) == 1


@pytest_twisted.inlineCallbacks
def test_size_and_recipient_limits(sandbox: Sandbox):
    sandbox.exchange.max_message_size = 1000
    sandbox.exchange.max_recipients = 2
    token = app_token(sandbox)

    def talk():
        client = smtp_connect(sandbox)
        client.docmd("AUTH", "XOAUTH2 " + xoauth2(DEFAULT_MAILBOX, token))
        declared = client.docmd("MAIL", "FROM:<a@example.com> SIZE=5000")
        client.mail("a@example.com")
        rcpts = [client.rcpt(f"r{i}@example.com") for i in range(3)]
        big = client.data(b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n")
        client.quit()
        return declared, rcpts, big

    declared, rcpts, big = yield threads.deferToThread(talk)
    assert declared == (552, b"5.3.4 Message size exceeds fixed maximum message size")
    assert [r[0] for r in rcpts] == [250, 250, 452]
    assert rcpts[2] == (452, b"4.5.3 Too many recipients")
    assert big == (552, b"5.3.4 Message size exceeds fixed maximum message size")
    assert sandbox.mailbox.messages == []


@pytest_twisted.inlineCallbacks
def test_rate_limit_per_mailbox(sandbox: Sandbox):
    sandbox.exchange.messages_per_minute = 2
    token = app_token(sandbox)

    def talk():
        client = smtp_connect(sandbox)
        client.docmd("AUTH", "XOAUTH2 " + xoauth2(DEFAULT_MAILBOX, token))
        for _ in range(2):
            client.mail("a@example.com")
            client.rcpt("b@example.com")
            client.data(b"Subject: x\r\n\r\ny\r\n")
        third = client.docmd("MAIL", "FROM:<a@example.com>")
        return third

    third = yield threads.deferToThread(talk)
    assert third == (421, b"4.4.2 Message submission rate for this client has exceeded the configured limit")


@pytest_twisted.inlineCallbacks
def test_failure_injection_and_recipient_rejection(sandbox: Sandbox):
    token = app_token(sandbox)
    sandbox.exchange.fail_next("MAIL", "451 4.7.500 Server busy. Please try again later.")
    sandbox.exchange.fail_next(".", "451 4.4.0 Message failed to be made redundant due to A shadow copy was required but failed to be made with an AckStatus of Fail")
    sandbox.exchange.reject_recipient("gone@example.com")

    def talk():
        client = smtp_connect(sandbox)
        client.docmd("AUTH", "XOAUTH2 " + xoauth2(DEFAULT_MAILBOX, token))
        busy = client.docmd("MAIL", "FROM:<a@example.com>")
        client.mail("a@example.com")
        gone = client.rcpt("gone@example.com")
        client.rcpt("b@example.com")
        end = client.data(b"Subject: x\r\n\r\ny\r\n")
        client.quit()
        return busy, gone, end

    busy, gone, end = yield threads.deferToThread(talk)
    assert busy == (451, b"4.7.500 Server busy. Please try again later.")
    assert gone == (550, b"5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup")
    assert end[0] == 451
    assert sandbox.mailbox.messages == []


@pytest_twisted.inlineCallbacks
def test_421_at_connect_and_drop_mid_data(sandbox: Sandbox):
    sandbox.exchange.fail_next("CONNECT", "421 4.3.2 Service not available, closing transmission channel")
    token = app_token(sandbox)

    def refused():
        with pytest.raises(smtplib.SMTPConnectError) as e:
            smtplib.SMTP(sandbox.smtp_host, sandbox.smtp_port, timeout=10)
        return e.value.smtp_code, e.value.smtp_error

    assert (yield threads.deferToThread(refused)) == (421, b"4.3.2 Service not available, closing transmission channel")
    sandbox.exchange.drop_next("DATA_BODY")

    def dropped():
        client = smtp_connect(sandbox)
        client.docmd("AUTH", "XOAUTH2 " + xoauth2(DEFAULT_MAILBOX, token))
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        with pytest.raises((smtplib.SMTPServerDisconnected, ConnectionError, ssl.SSLError)):
            client.data(b"Subject: x\r\n\r\n" + b"y" * 100 + b"\r\n")

    yield threads.deferToThread(dropped)
    assert sandbox.mailbox.messages == []
    assert sandbox.exchange.connections_count == 2


@pytest_twisted.inlineCallbacks
def test_client_refuses_a_certificate_for_the_wrong_name(sandbox: Sandbox):
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory, Protocol

    wrong = sandbox.issue_certificate(("wrong.example",), "wrong")
    port = reactor.listenSSL(0, Factory.forProtocol(Protocol), wrong.server_options(), interface="127.0.0.1")

    def connect():
        context = ssl.create_default_context(cafile=sandbox.ca_file)
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5), server_hostname="localhost")

    try:
        yield threads.deferToThread(connect)
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_gmail_flavor_xoauth2(sandbox: Sandbox):
    account = sandbox.add_google_account("printer@gmail.example")
    body = sandbox.identity.google.token({"grant_type": "refresh_token", "client_id": account["client_id"],
                                          "client_secret": account["client_secret"], "refresh_token": account["refresh_token"]}).body

    def talk():
        client = smtp_connect(sandbox, sandbox.gmail_smtp_port)
        bad = client.docmd("AUTH", "XOAUTH2 " + xoauth2("printer@gmail.example", "ya29.nope"))
        after = client.docmd("")
        good = client.docmd("AUTH", "XOAUTH2 " + xoauth2("printer@gmail.example", body["access_token"]))
        client.quit()
        return bad, after, good

    bad, after, good = yield threads.deferToThread(talk)
    assert bad[0] == 334
    assert after[0] == 535 and b"5.7.8 Username and Password not accepted" in after[1]
    assert good == (235, b"2.7.0 Accepted")
