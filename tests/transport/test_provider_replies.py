"""
The table of provider replies (xrelay/replies.py): every documented text the sandbox
answers with is recognised by the row of the same name, every row cites its source,
and the decisions the transport reports follow the rows.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

import xrelay.replies
from xrelay.envelope import FailureKind, Outcome, Reply
from xrelay.replies import KNOWN_REPLIES, Decision, Hold, decision_of, recognise
from xrelay.sandbox import Sandbox
from xrelay.sandbox.exchange import PROVIDER_REPLIES
from xrelay.transport import transport_for
from xrelay.transport.classify import failure_of, outcome_of

from .conftest import account_for, message_file, simple_message, tokens_for


def parse(line: str) -> Reply:
    """A reply as xrelay's client parses it: lines joined, codes stripped."""
    lines = line.split("\r\n")
    return Reply(int(lines[0][:3]), "\n".join(part[4:] for part in lines))


@pytest.mark.parametrize("name", sorted(PROVIDER_REPLIES))
def test_each_sandbox_reply_is_recognised_by_its_row(name: str) -> None:
    _, line = PROVIDER_REPLIES[name]
    row = recognise(parse(line), app_only=False)
    assert row is not None and row.name == name


def test_every_row_cites_a_source() -> None:
    source = inspect.getsource(xrelay.replies)
    table = source[source.index("KNOWN_REPLIES: tuple"):source.index("def recognise")]
    rows = table.split("KnownReply(")[1:]
    comments = table.split("KnownReply(")[:-1]
    assert len(rows) == len(KNOWN_REPLIES)
    uncited = [row.split(",")[0] for row, before in zip(rows, comments, strict=True)
               if "https://" not in before.rsplit("),", 1)[-1]
               and "kept from the old rules" not in before.rsplit("),", 1)[-1]]
    assert uncited == []


@pytest.mark.parametrize("reply, decision, hold", [
    (Reply(535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is "
           "disabled for the Tenant."), Decision.HOLD_ACCOUNT, Hold.SMTP_AUTH_DISABLED),
    (Reply(550, "5.7.60 SMTP; Client does not have permissions to send as this sender"),
     Decision.HOLD_SENDER, None),
    # Gmail: 452 4.2.2 (full for now) is retried; 552 5.2.2 is permanent (issue 23).
    (Reply(452, "4.2.2 The recipient's inbox is out of storage space."),
     Decision.RETRY_MESSAGE, None),
    (Reply(552, "5.2.2 The email account that you tried to reach is over quota."),
     Decision.BOUNCE_RECIPIENT, None),
    (Reply(554, "5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException."
                "MapiExceptionQuotaExceeded; Failed to process message"),
     Decision.HOLD_ACCOUNT, Hold.MAILBOX_FULL),
    (Reply(450, "4.2.1 The user you are trying to contact is receiving mail at a rate "
                "that prevents additional messages from being delivered."),
     Decision.RETRY_MESSAGE, None),
    (Reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found"),
     Decision.BOUNCE_RECIPIENT, None),
    (Reply(250, "2.6.0 Queued mail for delivery"), Decision.DELIVER, None),
])
def test_decisions(reply: Reply, decision: Decision, hold: Hold | None) -> None:
    assert decision_of(reply) is decision
    row = recognise(reply)
    assert (row.hold if row else None) is hold


def test_over_quota_is_not_too_big() -> None:
    """measurements.md: 552-5.2.2 (recipient over quota) was labelled TOO_BIG."""
    reply = Reply(552, "5.2.2 The email account that you tried to reach is over quota.")
    assert failure_of(reply) is FailureKind.NONE
    assert outcome_of(reply) is Outcome.PERMANENT  # Gmail's 552 5.2.2 (issue 23)
    reply = Reply(452, "4.2.2 The recipient's inbox is out of storage space.")
    assert failure_of(reply) is FailureKind.NONE
    assert outcome_of(reply) is Outcome.TEMPORARY


def test_app_only_5_7_3_is_about_the_app_delegated_is_about_the_token() -> None:
    reply = Reply(535, "5.7.3 Authentication unsuccessful [SB1PR01CA0001]")
    assert recognise(reply, app_only=True).hold is Hold.APP_NOT_AUTHORISED
    assert recognise(reply, app_only=False) is None


@pytest_twisted.ensureDeferred
async def test_refused_greeting_falls_back_to_connection(sandbox: Sandbox, tmp_path: Any
                                                         ) -> None:
    """measurements.md: `failure_of(...) or FailureKind.CONNECTION` never fell back."""
    sandbox.exchange.fail_next("EHLO", "550 5.7.1 Client host rejected: access denied")
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    await transport.close()
    assert result.failure is FailureKind.CONNECTION
    assert re.match(r"^550 5\.7\.1 ", str(result.recipients[0].reply))


@pytest.mark.parametrize("reply, hold", [
    (Reply(451, "4.7.0 Microsoft Graph: HTTP 429 ApplicationThrottled: Application is "
           "over its MailboxConcurrency limit."), Hold.THROTTLED),
    (Reply(451, "4.7.0 Microsoft Graph: HTTP 403 ErrorAccessDenied: Access is denied. "
           "Check credentials and try again."), Hold.APP_NOT_AUTHORISED),
])
def test_graph_replies_hold_the_account(reply: Reply, hold: Hold) -> None:
    row = recognise(reply, app_only=True)
    assert row.decision is Decision.HOLD_ACCOUNT and row.hold is hold
