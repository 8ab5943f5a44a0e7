"""
Graph upload sessions against the sandbox: the draft is removed when sending fails, a
missing Mail.ReadWrite holds the account with the fix, a signed message is refused
rather than broken, and ranges never exceed 4 MB.
"""

from __future__ import annotations

import email.policy
import os
from email.message import EmailMessage
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from xrelay.envelope import FailureKind, Outcome
from xrelay.replies import Hold, recognise
from xrelay.sandbox import Sandbox
from xrelay.sandbox.identity import GRAPH_RESOURCE
from xrelay.transport import transport_for
from xrelay.transport.graphupload import RANGE_BYTES

from .conftest import GRAPH_SCOPE, account_for, message_file, tokens_for


def scan(size: int, signed: bool = False) -> bytes:
    msg = EmailMessage()
    msg["From"] = "relay@sandbox.example"
    msg["To"] = "alice@example.net"
    msg["Subject"] = "scan"
    msg.set_content("Scan attached.")
    msg.add_attachment(os.urandom(size), maintype="application", subtype="pdf",
                       filename="scan.pdf")
    data = msg.as_bytes(policy=email.policy.SMTP)
    if signed:
        data = data.replace(b"multipart/mixed", b"multipart/signed", 1)
    return data


def upload_transport(sandbox: Sandbox, read_write: bool = True) -> Any:
    if read_write:
        sandbox.default_app.roles[GRAPH_RESOURCE] = ("Mail.Send", "Mail.ReadWrite")
    account = account_for(sandbox, transport="graph", graph_large_messages="upload_session")
    return transport_for(account, tokens_for(sandbox, GRAPH_SCOPE), reactor)


@pytest_twisted.ensureDeferred
async def test_a_failed_send_removes_the_draft(sandbox: Sandbox, tmp_path: Any) -> None:
    transport = upload_transport(sandbox)
    sandbox.graph.fail_next_send()
    result = await transport.deliver(message_file(tmp_path, scan(5 * 1024 * 1024)))
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    assert sandbox.graph.drafts == {} and sandbox.mailbox.messages == []
    assert sandbox.graph.requests[-1] == ("DELETE", "delete")
    result = await transport.deliver(message_file(tmp_path, scan(5 * 1024 * 1024)))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert sandbox.graph.drafts == {} and len(sandbox.mailbox.messages) == 1


@pytest_twisted.ensureDeferred
async def test_without_mail_readwrite_the_account_is_held_with_the_fix(
        sandbox: Sandbox, tmp_path: Any) -> None:
    transport = upload_transport(sandbox, read_write=False)
    result = await transport.deliver(message_file(tmp_path, scan(4 * 1024 * 1024)))
    await transport.close()
    assert result.failure is FailureKind.ACCOUNT_HELD
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    reply = result.recipients[0].reply
    row = recognise(reply, app_only=True)
    assert row is not None and row.hold is Hold.APP_NOT_AUTHORISED
    assert "Mail.ReadWrite" in result.detail
    assert sandbox.graph.drafts == {}


@pytest_twisted.ensureDeferred
async def test_ranges_are_at_most_four_megabytes(sandbox: Sandbox, tmp_path: Any) -> None:
    transport = upload_transport(sandbox)
    assert RANGE_BYTES <= 4 * 1024 * 1024
    result = await transport.deliver(message_file(tmp_path, scan(9 * 1024 * 1024)))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert sandbox.graph.range_sizes == [RANGE_BYTES, RANGE_BYTES,
                                         9 * 1024 * 1024 - 2 * RANGE_BYTES]


@pytest_twisted.ensureDeferred
async def test_a_signed_message_is_refused_not_broken(sandbox: Sandbox, tmp_path: Any
                                                      ) -> None:
    transport = upload_transport(sandbox)
    result = await transport.deliver(message_file(tmp_path, scan(4 * 1024 * 1024, True)))
    await transport.close()
    assert result.failure is FailureKind.TOO_BIG
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    assert "S/MIME" in result.recipients[0].reply.text
    assert sandbox.graph.requests == []


@pytest_twisted.ensureDeferred
async def test_mid_sized_files_go_in_one_post_each(sandbox: Sandbox, tmp_path: Any) -> None:
    """Three 2 MB files (8 MB as MIME): two leave the draft, each under 3 MB, so each goes
    in one POST .../attachments as Microsoft says; the third stays in the draft."""
    transport = upload_transport(sandbox)
    msg = EmailMessage()
    msg["From"] = "relay@sandbox.example"
    msg["To"] = "alice@example.net"
    msg["Subject"] = "=?utf-8?q?three_scans?="
    msg.set_content("Scans attached.")
    files = {f"scan-{i}.pdf": os.urandom(2 * 1024 * 1024) for i in range(3)}
    for name, data in files.items():
        msg.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    result = await transport.deliver(message_file(tmp_path, msg.as_bytes(
        policy=email.policy.SMTP)))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    kinds = [what for _, what in sandbox.graph.requests]
    assert kinds == ["draft", "attachment", "attachment", "send"]
    [delivered] = sandbox.mailbox.messages
    received = email.message_from_bytes(delivered.data, policy=email.policy.default)
    got = {p.get_filename(): p.get_content() for p in received.walk() if p.get_filename()}
    assert got == files


@pytest_twisted.ensureDeferred
async def test_throttled_upload_session_waits_and_leaves_no_draft(sandbox: Sandbox,
                                                                  tmp_path: Any) -> None:
    transport = upload_transport(sandbox)
    sandbox.graph.throttle_next(1, retry_after=9, after=1)  # the draft goes, not the session
    result = await transport.deliver(message_file(tmp_path, scan(4 * 1024 * 1024)))
    assert result.failure is FailureKind.THROTTLED and result.retry_after == 9.0
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    assert [what for _, what in sandbox.graph.requests] == [
        "draft", "createUploadSession", "delete"]
    assert sandbox.graph.drafts == {}
    result = await transport.deliver(message_file(tmp_path, scan(4 * 1024 * 1024)))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
