"""
The provider replies added for issue 23, each driven through the real transport (SMTP
with XOAUTH2, or Graph over HTTPS) into the sandbox, with the real delivery engine and
spool: an account-level reply keeps the queue and holds the account with its fix (what
`xrelay accounts` shows); a recipient-level one retries that recipient only; a
permanent one bounces.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred

from tests.delivery.test_provider_states import Relay, hold
from tests.transport.conftest import GRAPH_SCOPE, account_for, tokens_for
from xrelay.config import Config, DeliveryConfig, ServerConfig
from xrelay.delivery import DeliveryEngine
from xrelay.operations.commands import _account_state_text
from xrelay.sandbox.exchange import PROVIDER_REPLIES
from xrelay.spool import DEFERRED, Spool, run_inline
from xrelay.transport import transport_for

from tests.delivery.delivery_harness import START

@pytest.fixture
def relay(sandbox: Any, tmp_path: Any) -> Iterator[Relay]:
    r = Relay(sandbox, tmp_path)
    yield r
    if r.engine is not None:
        pytest_twisted.blockon(ensureDeferred(r.stop()))


HELD = {
    "sender-mailbox-full": ("mailbox full", "Sent Items"),
    "banned-sender": ("blocked by provider", "Restricted entities"),
    "not-authenticated-5.7.57": ("not authenticated upstream", "smtp.office365.com"),
    "smtp-auth-conditional-access": ("SMTP AUTH disabled", "Conditional Access"),
    "smtp-auth-account-locked": ("SMTP AUTH disabled", "unblock sign-in"),
}


@pytest.mark.parametrize("name", sorted(HELD))
@pytest_twisted.ensureDeferred
async def test_account_level_replies_hold_the_account_with_their_fix(
        relay: Relay, name: str) -> None:
    relay.start(first_retry=60)
    hold(relay, name)
    relay.receive(3)
    await relay.idle()
    state, fix = HELD[name]
    status = relay.engine.status().accounts["sandbox"]
    assert status.state == state, status
    assert fix in status.fix
    assert "Set-CASMailbox" not in status.fix or name in ("not-authenticated-5.7.57",)
    assert fix in _account_state_text(dict(status.as_json()))  # `xrelay accounts`
    assert len(relay.waiting()) == 3 and relay.failed() == []  # nothing bounced
    assert not any(e.bounce_of for e in relay.spool.entries())
    hold(relay, None)
    await relay.advance(60)
    assert relay.mails == 3 and relay.state() == "ok"


@pytest_twisted.ensureDeferred
async def test_gmail_authentication_required_holds_the_account(relay: Relay) -> None:
    relay.start(first_retry=60, gmail=True)
    hold(relay, "gmail-auth-required")
    relay.receive(2)
    await relay.idle()
    status = relay.engine.status().accounts["sandbox"]
    assert status.state == "not authenticated upstream"
    assert "xrelay login sandbox" in status.fix
    assert len(relay.waiting()) == 2 and relay.failed() == []


@pytest_twisted.ensureDeferred
async def test_a_busy_gmail_recipient_is_retried_alone(relay: Relay) -> None:
    relay.start(first_retry=60, gmail=True)
    step, line = PROVIDER_REPLIES["gmail-recipient-rate"]
    relay.server.fail_next(step, line, recipient="bob@example.net")
    [entry] = relay.receive(1, recipients=("alice@example.net", "bob@example.net"))
    relay.receive(1)
    await relay.idle()
    assert relay.state() == "ok"  # the account keeps delivering
    assert relay.mails == 2  # alice's copy, and the next message
    assert relay.spool.get(entry).state == DEFERRED
    assert relay.spool.get(entry).recipients == ("bob@example.net",)
    await relay.advance(60)
    assert relay.mails == 3 and relay.waiting() == []
    assert relay.sandbox.mailbox.messages[-1].rcpt_to == ("bob@example.net",)
    assert len(relay.sandbox.mailbox.for_recipient("alice@example.net")) == 2


@pytest_twisted.ensureDeferred
async def test_gmail_552_5_2_2_bounces_at_once(relay: Relay) -> None:
    relay.start(first_retry=60, gmail=True)
    step, line = PROVIDER_REPLIES["recipient-over-quota-permanent"]
    relay.server.fail_next(step, line)
    [entry] = relay.receive(1)
    await relay.idle()
    [failed] = relay.failed()
    assert failed.entry_id == entry and failed.last_reply.text.startswith("5.2.2")
    assert relay.state() == "ok"


# -- Graph ----------------------------------------------------------------------------

def start_graph(relay: Relay, **account: Any) -> None:
    """L{Relay.start} for a Graph account (app-only, Graph token scope)."""
    relay.clock.advance(START)
    relay.account = account_for(relay.sandbox, transport="graph", messages_per_minute=0,
                                recipients_per_day=0, max_connections=1, **account)
    relay.tokens = tokens_for(relay.sandbox, GRAPH_SCOPE)
    relay.transport = transport_for(relay.account, relay.tokens, reactor)
    cfg = Config(server=ServerConfig(hostname="relay.example.com", shutdown_timeout=5),
                 accounts=(relay.account,), delivery=DeliveryConfig(first_retry=60))
    relay.spool = Spool(str(relay.tmp_path / "spool"), run_blocking=run_inline)
    relay.engine = DeliveryEngine(cfg, relay.spool, {relay.account.name: relay.transport},
                                  reactor=reactor, clock=relay.clock, random=lambda: 0.5,
                                  state_dir=str(relay.tmp_path / "state"))
    relay.engine.startService()


GRAPH_HELD = {
    "MailboxNotEnabledForRESTAPI": ("mailbox not usable", "Exchange Online licence"),
    "ErrorInvalidUser": ("mailbox not usable", "primary SMTP address"),
    "ErrorQuotaExceeded": ("mailbox full", "Sent Items"),
}


@pytest.mark.parametrize("kind", sorted(GRAPH_HELD))
@pytest_twisted.ensureDeferred
async def test_graph_mailbox_errors_hold_the_account(relay: Relay, kind: str) -> None:
    start_graph(relay)
    relay.sandbox.graph.fail_mailbox(relay.account.user, kind)
    relay.receive(3)
    await relay.idle()
    state, fix = GRAPH_HELD[kind]
    status = relay.engine.status().accounts["sandbox"]
    assert status.state == state and fix in status.fix, status
    assert "app not authorised" not in status.label
    assert kind in status.reason
    assert len(relay.waiting()) == 3 and relay.failed() == []
    assert not any(e.bounce_of for e in relay.spool.entries())
    assert relay.sandbox.graph.requests.count(("POST", "sendMail")) == 1  # one probe
    relay.sandbox.graph.fail_mailbox(relay.account.user, None)
    await relay.advance(60)
    assert relay.mails == 3 and relay.state() == "ok"


@pytest_twisted.ensureDeferred
async def test_graph_token_refused_twice_holds_with_the_graph_fix(relay: Relay) -> None:
    start_graph(relay)
    relay.sandbox.default_app.roles["https://graph.microsoft.com"] = ()  # no Mail.Send
    relay.receive(1)
    await relay.idle()
    status = relay.engine.status().accounts["sandbox"]
    assert status.state == "app not authorised for the mailbox"
    assert "Mail.Send" in status.fix and "New-ServicePrincipal" not in status.fix
    assert relay.waiting() and relay.failed() == []


# -- the daily recipient budget ----------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_the_budget_counts_what_the_provider_took(relay: Relay) -> None:
    """Refused (bounced) and deferred recipients leave the day's count; the bounce itself
    is a message the account sends, so it counts."""
    relay.start(first_retry=60, recipients_per_day=100)
    relay.sandbox.exchange.reject_recipient("gone@example.net")
    relay.receive(1, recipients=("alice@example.net", "gone@example.net", "bob@example.net"))
    await relay.idle()
    await relay.idle()  # the bounce to the sender
    pace = relay.engine.queue.pace("sandbox")
    assert relay.mails == 2  # alice and bob's copy, and the bounce
    assert pace.recipients_today(relay.clock.seconds()) == 3  # alice, bob, the bounce
    step, line = PROVIDER_REPLIES["server-busy"]
    relay.sandbox.exchange.fail_next(step, line)
    relay.receive(1)
    await relay.idle()
    assert pace.recipients_today(relay.clock.seconds()) == 3  # deferred: not counted
    await relay.advance(60)
    assert relay.mails == 3
    assert pace.recipients_today(relay.clock.seconds()) == 4  # counted once, delivered
    # and a restart adds the journal up the same way
    records = relay.engine.accounts.budget.load("sandbox", relay.clock.seconds())
    assert sum(n for _, n in records) == 4
