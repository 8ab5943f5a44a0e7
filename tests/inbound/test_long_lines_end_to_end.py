"""
A scanner that sends its PDF as one 400 KB base64 line (issue 23): refused with a 552
that names server.max_line_length by default; with the limit raised it is spooled and
delivered through the real SMTP transport into the sandbox's Exchange byte-correct.
"""

from __future__ import annotations

import base64
import email
import email.policy
import os
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from tests.inbound.harness import connect, inline, make_config, until
from tests.inbound.test_smuggling_end_to_end import SendAtOnce, sandbox_transport
from xrelay.spool import Spool


def one_line_scan(pdf: bytes) -> bytes:
    return (b"From: scanner@example.com\r\nTo: alice@example.net\r\nSubject: scan\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nScan attached.\r\n"
            b"--b\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n"
            b"Content-Disposition: attachment; filename=\"scan.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.b64encode(pdf) + b"\r\n--b--\r\n")


async def send(port: int, data: bytes) -> str:
    client = await connect(port)
    await client.command(b"EHLO scanner.test")
    for command in (b"MAIL FROM:<scanner@example.com>", b"RCPT TO:<alice@example.net>",
                    b"DATA"):
        await client.command(command)
    client.send(data + b".\r\n")
    [reply] = await client.read(1, timeout=60)
    return reply


@pytest_twisted.ensureDeferred
async def test_400_kb_base64_line(relay: Any, sandbox: Any, tmp_path: Any) -> None:
    pdf = os.urandom(300 * 1024)  # 400 KB as one base64 line
    data = one_line_scan(pdf)
    account, transport = sandbox_transport(sandbox)
    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    delivery = SendAtOnce(spool, transport)
    default = await relay(make_config(accounts=(account,)), spool=spool, delivery=delivery,
                          run_blocking=inline)
    reply = await send(default.port, data)
    assert reply.startswith("552 5.6.0 Message refused: a line is longer than 4096 bytes "
                            "(server.max_line_length"), reply
    assert list(spool.entries()) == []
    raised = await relay(make_config(accounts=(account,), max_line_length=1024 * 1024),
                         spool=spool, delivery=delivery, run_blocking=inline)
    reply = await send(raised.port, data)
    assert reply.startswith("250 2.0.0 Ok: queued as "), reply
    await until(lambda: delivery.results, timeout=60)
    assert [r.reply.code for r in delivery.results[0].recipients] == [250]
    [message] = sandbox.mailbox.messages
    received = email.message_from_bytes(message.data, policy=email.policy.default)
    [attachment] = [p for p in received.walk() if p.get_filename() == "scan.pdf"]
    assert attachment.get_content() == pdf
    await transport.close()
