"""
A scanner's PDF through a Graph account, end to end: raw SMTP into the listener, the
real spool on disk, the real Graph transport over verified HTTPS into the sandbox's
Graph.  With upload sessions a 10 MB attachment arrives byte for byte; without them the
device is told 552 5.3.4 with the account's limit at the end of DATA and nothing is
queued; SIZE advertises what the largest route carries.
"""

from __future__ import annotations

import email
import email.policy
import os
from email.message import EmailMessage
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from tests.inbound.harness import connect, inline, make_config, until
from tests.inbound.test_smuggling_end_to_end import SendAtOnce
from tests.transport.conftest import GRAPH_SCOPE, account_for, tokens_for
from xrelay.config import GRAPH_SINGLE_REQUEST_MESSAGE
from xrelay.sandbox.identity import GRAPH_RESOURCE
from xrelay.spool import Spool
from xrelay.transport import transport_for


def pdf_scan(pdf: bytes) -> bytes:
    msg = EmailMessage()
    msg["From"] = "scanner@example.com"
    msg["To"] = "alice@example.net"
    msg["Subject"] = "Scan from MFP-3"
    msg["Message-ID"] = "<scan-1@example.com>"
    msg["Date"] = "Mon, 07 Dec 2026 18:00:00 +0000"
    msg.set_content("Scanned document attached.")
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename="scan.pdf")
    return msg.as_bytes(policy=email.policy.SMTP)


async def relay_through_graph(relay: Any, sandbox: Any, tmp_path: Any, **account: Any
                              ) -> tuple[Any, Any, Spool]:
    graph = account_for(sandbox, transport="graph", **account)
    transport = transport_for(graph, tokens_for(sandbox, GRAPH_SCOPE), reactor)
    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    delivery = SendAtOnce(spool, transport)
    config = make_config(accounts=(graph,), relay_senders=("*",),
                         max_message_size=36700160)
    running = await relay(config, spool=spool, delivery=delivery, run_blocking=inline)
    return running, delivery, spool


async def send(port: int, data: bytes) -> tuple[str, str]:
    client = await connect(port)
    ehlo = await client.command(b"EHLO printer.test")
    for command in (b"MAIL FROM:<scanner@example.com>", b"RCPT TO:<alice@example.net>",
                    b"DATA"):
        await client.command(command)
    client.send(data + b".\r\n")
    [reply] = await client.read(1, timeout=60)
    return ehlo, reply


@pytest_twisted.ensureDeferred
async def test_ten_megabyte_scan_arrives_byte_identical_with_upload_sessions(
        relay: Any, sandbox: Any, tmp_path: Any) -> None:
    sandbox.default_app.roles[GRAPH_RESOURCE] = ("Mail.Send", "Mail.ReadWrite")
    running, delivery, spool = await relay_through_graph(
        relay, sandbox, tmp_path, graph_large_messages="upload_session")
    pdf = b"%PDF-1.7\n" + os.urandom(10 * 1024 * 1024)
    ehlo, reply = await send(running.port, pdf_scan(pdf))
    assert "SIZE 36700160" in ehlo
    assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    await until(lambda: delivery.results, timeout=120)
    [result] = delivery.results
    assert [r.outcome.value for r in result.recipients] == ["delivered"], result
    [delivered] = sandbox.mailbox.messages
    assert delivered.rcpt_to == ("alice@example.net",)
    received = email.message_from_bytes(delivered.data, policy=email.policy.default)
    [attachment] = [p for p in received.walk() if p.get_filename() == "scan.pdf"]
    assert attachment.get_content() == pdf
    assert received["Subject"] == "Scan from MFP-3"
    kinds = [what for _, what in sandbox.graph.requests]
    assert kinds[:2] == ["draft", "createUploadSession"] and kinds[-1] == "send"
    assert kinds.count("upload") == 4  # 10 MB in ranges of at most 4 MB
    assert sandbox.graph.drafts == {}  # sent, not left in Drafts


@pytest_twisted.ensureDeferred
async def test_without_upload_sessions_the_device_is_told_at_the_end_of_data(
        relay: Any, sandbox: Any, tmp_path: Any) -> None:
    running, delivery, spool = await relay_through_graph(relay, sandbox, tmp_path)
    pdf = b"%PDF-1.7\n" + os.urandom(2_400_000)  # one colour page: 3.2 MB as MIME
    data = pdf_scan(pdf)
    assert len(data) > GRAPH_SINGLE_REQUEST_MESSAGE
    ehlo, reply = await send(running.port, data)
    # SIZE says what the only route carries, not server.max_message_size.
    assert f"SIZE {GRAPH_SINGLE_REQUEST_MESSAGE}" in ehlo
    assert reply.startswith("552 5.3.4 Message too big for account sandbox: it carries "
                            f"at most {GRAPH_SINGLE_REQUEST_MESSAGE} bytes"), reply
    assert "graph_large_messages" in reply
    assert list(spool.entries()) == [] and delivery.results == []
    assert sandbox.graph.requests == []
    # A scan that fits goes through as before.
    _, reply = await send(running.port, pdf_scan(b"%PDF-1.7\n" + os.urandom(1_000_000)))
    assert reply.startswith("250 ")
    await until(lambda: delivery.results, timeout=60)
    assert len(sandbox.mailbox.messages) == 1


@pytest_twisted.ensureDeferred
async def test_a_large_message_upload_sessions_cannot_split_is_told_at_once(
        relay: Any, sandbox: Any, tmp_path: Any) -> None:
    sandbox.default_app.roles[GRAPH_RESOURCE] = ("Mail.Send", "Mail.ReadWrite")
    running, delivery, spool = await relay_through_graph(
        relay, sandbox, tmp_path, graph_large_messages="upload_session")
    import base64

    single = (b"From: scanner@example.com\r\nTo: alice@example.net\r\nSubject: scan\r\n"
              b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
              + base64.encodebytes(os.urandom(3 * 1024 * 1024)).replace(b"\n", b"\r\n"))
    _, reply = await send(running.port, single)
    assert reply.startswith("552 5.3.4 Message too big for account sandbox: a "
                            "application/pdf message over"), reply
    assert "cannot be split" in reply
    assert list(spool.entries()) == [] and sandbox.graph.requests == []
