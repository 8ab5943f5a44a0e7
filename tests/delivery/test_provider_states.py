"""
What Exchange Online and Gmail answer when the account is in trouble, driven through the
real SMTP transport (verified TLS, XOAUTH2 with real sandbox tokens) into the sandbox's
per-mailbox reply switches, with the real delivery engine and spool on disk.  The
engine's clock is a task.Clock (back-off steps are exact); the network runs on the
reactor.

For each decision of L{xrelay.replies}: the message's fate, the account's state, the
number of upstream attempts and of token requests.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import formatEvent, globalLogPublisher

from xrelay.config import Config, DeliveryConfig, ServerConfig
from xrelay.delivery import DeliveryEngine
from xrelay.envelope import Envelope
from xrelay.sandbox import Sandbox
from xrelay.spool import DEFERRED, FAILED, Spool, run_inline
from xrelay.transport import transport_for

from tests.delivery.delivery_harness import MESSAGE, START
from tests.transport.conftest import account_for, tokens_for

MAILBOX_SENDER = "scanner@example.com"
GMAIL_USER = "relay@gmail-sandbox.example"


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@attrs.define
class Relay:
    """The engine, its spool and its one account's transport against the sandbox."""

    sandbox: Sandbox
    tmp_path: Any
    clock: task.Clock = attrs.field(factory=task.Clock)
    engine: Any = None
    spool: Any = None
    tokens: Any = None
    transport: Any = None
    account: Any = None
    token_service: Any = None

    def start(self, first_retry: int = 60, max_age: int = 432000, gmail: bool = False,
              send_as_denied: str = "bounce", **account: Any) -> None:
        self.clock.advance(START)
        values = dict(messages_per_minute=0, recipients_per_day=0, max_connections=1)
        values.update(account)
        if gmail:
            self.account, self.tokens = self._gmail_account(values)
        else:
            self.account = account_for(self.sandbox, **values)
            self.tokens = tokens_for(self.sandbox)
        self.transport = transport_for(self.account, self.tokens, reactor)
        cfg = Config(server=ServerConfig(hostname="relay.example.com", shutdown_timeout=5),
                     accounts=(self.account,),
                     delivery=DeliveryConfig(first_retry=first_retry, max_age=max_age,
                                             send_as_denied=send_as_denied))
        self.spool = Spool(str(self.tmp_path / "spool"), run_blocking=run_inline)
        self.engine = DeliveryEngine(cfg, self.spool, {self.account.name: self.transport},
                                     reactor=reactor, clock=self.clock, random=lambda: 0.5,
                                     state_dir=str(self.tmp_path / "state"))
        self.engine.startService()

    def _gmail_account(self, values: dict[str, Any]) -> tuple[Any, Any]:
        """A Google account (refresh token grant) against the Gmail-like server, with
        the token service's real source."""
        from xrelay.addresses import SenderPattern
        from xrelay.config import AccountConfig
        from xrelay.tokens import TokenService

        keys = self.sandbox.add_google_account(GMAIL_USER)
        secrets = self.tmp_path / "secrets"
        secrets.mkdir(mode=0o700)
        for name, key in (("secret.txt", "client_secret"), ("rt.txt", "refresh_token")):
            (secrets / name).write_text(keys[key])
            (secrets / name).chmod(0o600)
        account = AccountConfig(
            name="sandbox", provider="google", user=GMAIL_USER, flow="refresh_token",
            senders=(SenderPattern.parse("*"),), client_id=keys["client_id"],
            client_secret_file=str(secrets / "secret.txt"),
            refresh_token_file=str(secrets / "rt.txt"),
            authority=self.sandbox.google_authority, smtp_host=keys["smtp_host"],
            smtp_port=int(keys["smtp_port"]), ca_file=self.sandbox.ca_file, **values)
        self.token_service = TokenService(Config(
            server=ServerConfig(hostname="relay.test",
                                state_dir=str(self.tmp_path / "token-state")),
            accounts=(account,)))
        return account, self.token_service.sources["sandbox"]

    @property
    def server(self) -> Any:
        return self.sandbox.gmail if self.account.provider == "google" else \
            self.sandbox.exchange

    @property
    def token_requests(self) -> int:
        if self.account.provider == "google":
            return len(self.sandbox.identity.google.access_tokens)
        return int(self.tokens.fetched)

    def receive(self, count: int = 1, sender: str = MAILBOX_SENDER,
                recipients: tuple[str, ...] = ("alice@example.net",)) -> list[str]:
        ids = []
        for _ in range(count):
            incoming = self.spool.incoming(Envelope(
                sender, recipients, account=self.account.name,
                received_at=self.clock.seconds()))
            incoming.write(MESSAGE)
            ids.append(incoming.commit().result)
            self.engine.submitted(ids[-1])
        return ids

    async def idle(self, timeout: float = 60) -> None:
        """Wait (real time) until no attempt is in flight."""
        deadline = time.monotonic() + timeout
        await deferLater(reactor, 0.01, lambda: None)
        while self.engine._in_flight:
            assert time.monotonic() < deadline, "deliveries did not finish"
            await deferLater(reactor, 0.02, lambda: None)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.idle()

    async def stop(self) -> None:
        await self.engine.stopService()
        await self.transport.close()
        if self.token_service is not None and self.token_service.running:
            await self.token_service.stopService()

    def state(self) -> str:
        return self.engine.status().accounts[self.account.name].label

    @property
    def mails(self) -> int:
        """Messages the sandbox stored (accepted upstream)."""
        return len(self.sandbox.mailbox.messages)

    def attempts(self, command: str = "MAIL") -> int:
        """Upstream attempts: commands of this kind over all connections."""
        return sum(1 for t in self.server.transcripts for c in t.commands
                   if c.upper().startswith(command))

    def waiting(self) -> list[Any]:
        return [e for e in self.spool.entries() if e.state != FAILED]

    def failed(self) -> list[Any]:
        return [e for e in self.spool.entries() if e.state == FAILED]


@pytest.fixture
def relay(sandbox: Sandbox, tmp_path: Any) -> Iterator[Relay]:
    r = Relay(sandbox, tmp_path)
    yield r
    if r.engine is not None:
        pytest_twisted.blockon(ensureDeferred(r.stop()))


def hold(relay: Relay, name: str | None) -> None:
    relay.server.answer_as(relay.account.user, name)


# -- hold the whole account -------------------------------------------------------

@pytest.mark.parametrize("name", ["outbound-spam", "bad-outbound-sender", "tenant-blocked"])
@pytest_twisted.ensureDeferred
async def test_blocked_by_provider_keeps_the_queue_and_probes_one_message(
        relay: Relay, name: str, log_lines: list[str]) -> None:
    relay.start(first_retry=60)
    hold(relay, name)
    relay.receive(5)
    await relay.idle()
    assert relay.state() == "blocked by provider"
    assert len(relay.waiting()) == 5 and relay.failed() == []  # nothing bounced
    assert relay.attempts() == 1  # the first message found it; the rest wait
    for step, wait in enumerate((60, 120, 240), start=2):  # one probe per step
        await relay.advance(wait - 1)
        assert relay.attempts() == step - 1
        await relay.advance(1)
        assert relay.attempts() == step
    assert relay.tokens.fetched == 1 and relay.mails == 0
    assert not any(e.bounce_of for e in relay.spool.entries())
    held = [line for line in log_lines if "account sandbox held" in line]
    assert len(held) == 1
    assert "Restricted entities" in held[0] or "service request" in held[0]
    hold(relay, None)  # Microsoft unblocks the mailbox
    await relay.advance(480)
    assert relay.mails == 5 and relay.waiting() == []
    assert relay.state() == "ok"
    assert sum("account sandbox resumed" in line for line in log_lines) == 1


@pytest.mark.parametrize("name", ["smtp-auth-tenant", "smtp-auth-mailbox",
                                  "smtp-auth-security-defaults"])
@pytest_twisted.ensureDeferred
async def test_smtp_auth_disabled_keeps_the_token(relay: Relay, name: str) -> None:
    relay.start(first_retry=60)
    hold(relay, name)
    relay.receive(2)
    await relay.idle()
    await relay.advance(60)
    assert relay.state() == "SMTP AUTH disabled"
    assert relay.attempts("AUTH") == 2  # one per probe, never a refresh-and-retry
    assert relay.tokens.fetched == 1 and relay.tokens.rejected == []
    status = relay.engine.status().accounts["sandbox"]
    assert "Set-CASMailbox -Identity relay@sandbox.example " \
        "-SmtpClientAuthenticationDisabled $false" in status.fix
    if name == "smtp-auth-tenant":
        assert "Set-TransportConfig -SmtpClientAuthenticationDisabled $false" in status.fix
    if name == "smtp-auth-security-defaults":
        assert "Manage security defaults" in status.fix
    assert len(relay.waiting()) == 2 and relay.failed() == []
    hold(relay, None)
    await relay.advance(120)
    assert relay.mails == 2 and relay.state() == "ok"
    assert relay.tokens.fetched == 1  # the same token all along


@pytest_twisted.ensureDeferred
async def test_app_not_authorised_for_the_mailbox(relay: Relay) -> None:
    relay.start(first_retry=60)
    grants = dict(relay.sandbox.exchange.app_mailboxes)
    relay.sandbox.exchange.app_mailboxes.clear()  # no service principal / permission
    relay.receive(3)
    await relay.idle()
    assert relay.state() == "app not authorised for the mailbox"
    status = relay.engine.status().accounts["sandbox"]
    assert f"New-ServicePrincipal -AppId {relay.account.client_id}" in status.fix
    assert "Add-MailboxPermission -Identity relay@sandbox.example" in status.fix
    assert relay.attempts("AUTH") == 2  # refused, refreshed once, refused again
    await relay.advance(60)
    assert relay.attempts("AUTH") == 4 and len(relay.waiting()) == 3
    relay.sandbox.exchange.app_mailboxes.update(grants)  # the admin grants it
    await relay.advance(120)
    assert relay.mails == 3 and relay.state() == "ok" and relay.failed() == []


@pytest.mark.parametrize("name", ["gmail-daily-limit", "tenant-external-recipient-limit"])
@pytest_twisted.ensureDeferred
async def test_daily_limit_waits_for_the_rolling_day_not_first_retry(
        relay: Relay, name: str) -> None:
    relay.start(first_retry=60)
    relay.receive(2)
    await relay.idle()  # both delivered: the day began at START
    hold(relay, name)
    relay.clock.advance(3600)
    relay.receive(3)
    await relay.idle()
    label = relay.state()
    assert label.startswith("daily limit reached (resumes at ")
    assert label.endswith(time.strftime("%H:%M)", time.localtime(START + 86400)))
    attempts = relay.attempts()
    await relay.advance(60 * 60)  # far past first_retry: nothing is tried
    assert relay.attempts() == attempts and len(relay.waiting()) == 3
    hold(relay, None)
    await relay.advance(86400 - 3600 * 2)  # the rolling day frees up
    assert relay.mails == 5 and relay.state() == "ok" and relay.failed() == []


@pytest.mark.parametrize("name", ["submission-rate", "thread-limit", "gmail-try-later",
                                  "gmail-auth-temporary"])
@pytest_twisted.ensureDeferred
async def test_throttled_waits_and_resumes(relay: Relay, name: str) -> None:
    relay.start(first_retry=60)
    hold(relay, name)
    relay.receive(3)
    await relay.idle()
    assert relay.state() == "throttled"
    assert relay.attempts("EHLO") == 2  # one connection (EHLO before and after TLS)
    hold(relay, None)
    await relay.advance(60)
    assert relay.mails == 3 and relay.state() == "ok"
    assert relay.tokens.fetched == 1


# -- retry this message, hold this sender, bounce this recipient -------------------

@pytest.mark.parametrize("name", ["insufficient-resources", "server-busy"])
@pytest_twisted.ensureDeferred
async def test_retry_this_message_leaves_the_account_alone(relay: Relay, name: str
                                                           ) -> None:
    relay.start(first_retry=60)
    step, line = __import__("xrelay.sandbox.exchange", fromlist=["x"]).PROVIDER_REPLIES[name]
    relay.sandbox.exchange.fail_next(step, line)
    first, second = relay.receive(2)
    await relay.idle()
    assert relay.state() == "ok"
    assert relay.spool.get(first).state == DEFERRED  # this message, later
    assert relay.mails == 1  # the next one went through at once
    await relay.advance(60)
    assert relay.mails == 2 and relay.waiting() == []


@pytest.mark.parametrize("code", ["5.7.60", "5.2.252"])
@pytest_twisted.ensureDeferred
async def test_send_as_refusal_bounces_with_the_fix_and_the_account_works_on(
        relay: Relay, code: str) -> None:
    relay.start(first_retry=60)
    relay.sandbox.exchange.fail_next("END_OF_DATA", (
        "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
        if code == "5.7.60" else
        relay.sandbox.exchange.send_as_denied(relay.account.user, "ceo@example.com")))
    [refused] = relay.receive(1, sender="ceo@example.com")
    relay.receive(1)
    await relay.idle()
    status = relay.engine.status().accounts["sandbox"]
    assert status.state == "ok" and status.held_senders == ()
    [failed] = relay.failed()
    assert failed.entry_id == refused and failed.last_reply.text.startswith(code)
    # the other message and the bounce (with the Send As fix) went out
    bounce = [m for m in relay.sandbox.mailbox.messages if m.rcpt_to == ("ceo@example.com",)]
    assert relay.mails == 2 and len(bounce) == 1
    import email

    dsn = email.message_from_bytes(bounce[0].data)
    text = dsn.get_payload()[0].get_payload(decode=True).decode()
    assert "Send As" in text and "Add-RecipientPermission" in text


@pytest.mark.parametrize("code", ["5.7.60", "5.2.252"])
@pytest_twisted.ensureDeferred
async def test_send_as_refusal_holds_the_sender_not_the_account(relay: Relay, code: str
                                                                ) -> None:
    relay.start(first_retry=60, send_as_denied="hold")
    relay.sandbox.exchange.fail_next("END_OF_DATA", (
        "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
        if code == "5.7.60" else
        relay.sandbox.exchange.send_as_denied(relay.account.user, "ceo@example.com")))
    [held] = relay.receive(1, sender="ceo@example.com")
    relay.receive(1)
    await relay.idle()
    status = relay.engine.status().accounts["sandbox"]
    assert status.state == "ok" and status.held_senders == ("ceo@example.com",)
    assert relay.spool.get(held).state == DEFERRED and relay.failed() == []
    entry = relay.spool.get(held)
    assert entry.last_reply.text.startswith(code)
    assert relay.mails == 1
    await relay.advance(60)  # Send As granted meanwhile: it goes out
    assert relay.mails == 2
    assert relay.engine.status().accounts["sandbox"].held_senders == ()


@pytest.mark.parametrize("name", ["external-forwarding", "too-big", "recipient-over-quota"])
@pytest_twisted.ensureDeferred
async def test_recipient_replies(relay: Relay, name: str) -> None:
    """5.7.520 and 5.3.4 bounce this recipient; 5.2.2 (mailbox full) retries this
    message; the account stays ok either way."""
    relay.start(first_retry=60)
    step, line = __import__("xrelay.sandbox.exchange", fromlist=["x"]).PROVIDER_REPLIES[name]
    relay.sandbox.exchange.fail_next(step, line)
    [entry_id] = relay.receive(1)
    await relay.idle()
    assert relay.state() == "ok"
    if name in ("external-forwarding", "too-big"):
        [failed] = relay.failed()
        assert failed.entry_id == entry_id
        assert relay.mails == 1  # the bounce, through the account that works
        assert relay.sandbox.mailbox.messages[0].rcpt_to == (MAILBOX_SENDER,)
    else:
        assert relay.spool.get(entry_id).state == DEFERRED and relay.mails == 0
        await relay.advance(60)
        assert relay.mails == 1


@pytest_twisted.ensureDeferred
async def test_bounce_through_a_held_account_is_kept_not_dropped(relay: Relay) -> None:
    relay.start(first_retry=60)
    from xrelay.sandbox.exchange import PROVIDER_REPLIES
    # The original is refused at RCPT (bounce this recipient); by the time its bounce
    # reaches the end of DATA, the mailbox is restricted.
    relay.sandbox.exchange.fail_next("RCPT", PROVIDER_REPLIES["external-forwarding"][1])
    relay.sandbox.exchange.fail_next("END_OF_DATA", PROVIDER_REPLIES["outbound-spam"][1])
    [original] = relay.receive(1)
    await relay.idle()
    assert relay.spool.get(original).state == FAILED
    hold(relay, "outbound-spam")
    for _ in range(3):
        await relay.advance(600)
    bounces = [e for e in relay.spool.entries() if e.bounce_of]
    assert len(bounces) == 1 and bounces[0].state == DEFERRED
    assert "OutboundSpamException" in bounces[0].last_reply.text  # with its reason
    assert relay.state() == "blocked by provider"
    hold(relay, None)
    await relay.advance(3600)
    assert relay.sandbox.mailbox.messages[-1].rcpt_to == (MAILBOX_SENDER,)
    assert [e for e in relay.spool.entries() if e.bounce_of] == []


# -- upstream unreachable (issue 14) ---------------------------------------------

@pytest_twisted.ensureDeferred
async def test_upstream_down_100_messages_a_few_connections_per_backoff_step(
        relay: Relay, log_lines: list[str]) -> None:
    relay.start(first_retry=60, max_connections=3)
    relay.sandbox.exchange.messages_per_minute = 0  # only the outage is under test
    relay.sandbox.exchange.down = True
    relay.receive(100)
    await relay.idle()
    first = relay.sandbox.exchange.connections_count
    assert 1 <= first <= 3  # the connections in flight when it went down
    assert relay.state() == "upstream unreachable"
    counts = []
    for wait in (60, 120, 240, 480):
        before = relay.sandbox.exchange.connections_count
        await relay.advance(wait)
        counts.append(relay.sandbox.exchange.connections_count - before)
    assert counts == [1, 1, 1, 1]  # one probe connection per back-off step
    assert len(relay.waiting()) == 100 and relay.failed() == []
    assert sum("account sandbox held" in line for line in log_lines) == 1
    relay.sandbox.exchange.down = False
    await relay.advance(960)
    await relay.idle()
    assert relay.mails == 100 and relay.state() == "ok"


@pytest_twisted.ensureDeferred
async def test_a_held_account_shows_in_metrics_admin_page_and_accounts(relay: Relay
                                                                       ) -> None:
    from twisted.web.template import flattenString

    from xrelay.admin import pages
    from xrelay.operations.commands import _account_state_text
    from xrelay.operations.metrics import RelayMetrics

    relay.start(first_retry=60, recipients_per_day=50)
    hold(relay, "outbound-spam")
    relay.receive(2)
    await relay.idle()
    metrics = RelayMetrics()
    metrics.watch_accounts(lambda: relay.engine.status().accounts.values())
    text = metrics.exposition().decode()
    assert 'xrelay_account_state{account="sandbox",state="blocked by provider"} 1.0' in text
    assert 'xrelay_account_state{account="sandbox",state="ok"} 0.0' in text
    status = relay.engine.status().accounts["sandbox"]
    line = _account_state_text(dict(status.as_json()))
    assert "account blocked by provider" in line and "Restricted entities" in line
    # (issue 23: the budget counts what the provider took; the held attempt took none)
    assert "recipients today 0/50 (50 left)" in line
    from xrelay.admin.glance import account_views, overall_line

    views = account_views([relay.account], {}, {}, 0.0, relay.engine.status().accounts)
    body = pages.status_body(overall_line(views, {}, None), views, {}, None, [], "csrf",
                             lambda name: None)
    html = (await flattenString(None, pages.Page("status", body))).decode()
    assert 'id="account-state-sandbox"' in html and "blocked by provider" in html
    assert "0 of 50 (50 left)" in html


# -- the same through the Gmail-like server, with Google tokens -------------------

@pytest_twisted.ensureDeferred
async def test_gmail_daily_limit_holds_until_the_rolling_day(relay: Relay) -> None:
    relay.start(first_retry=60, gmail=True)
    relay.receive(1)
    await relay.idle()
    assert relay.mails == 1
    hold(relay, "gmail-daily-limit")
    relay.clock.advance(600)
    relay.receive(4)
    await relay.idle()
    # Tomorrow: the time carries its date (a bare "22:13" read as today).
    assert relay.state() == "daily limit reached (resumes at %s)" % time.strftime(
        "%Y-%m-%d %H:%M", time.localtime(START + 86400))
    status = relay.engine.status().accounts["sandbox"]
    assert "550-5.4.5" not in (status.reason or "") and "5.4.5" in status.reason
    attempts = relay.attempts()
    await relay.advance(7200)  # first_retry is long past: still nothing tried
    assert relay.attempts() == attempts and len(relay.waiting()) == 4
    assert relay.failed() == [] and relay.token_requests == 1
    hold(relay, None)
    await relay.advance(86400 - 7800)
    assert relay.mails == 5 and relay.state() == "ok"


@pytest_twisted.ensureDeferred
async def test_gmail_try_again_later_is_throttled_and_over_quota_retried(relay: Relay
                                                                         ) -> None:
    from xrelay.sandbox.exchange import PROVIDER_REPLIES

    relay.start(first_retry=60, gmail=True)
    hold(relay, "gmail-try-later")
    relay.receive(2)
    await relay.idle()
    assert relay.state() == "throttled"
    hold(relay, None)
    relay.sandbox.gmail.fail_next("RCPT", PROVIDER_REPLIES["recipient-over-quota"][1])
    await relay.advance(60)
    assert relay.state() == "ok"
    assert relay.mails == 1  # one went; the over-quota one waits for its own retry
    [waiting] = relay.waiting()
    # (452 4.2.2, full for now; Gmail's 552 5.2.2 bounces: test_account_replies)
    assert waiting.state == DEFERRED and waiting.last_reply.enhanced == "4.2.2"
    await relay.advance(120)
    assert relay.mails == 2 and relay.failed() == [] and relay.token_requests == 1


@pytest_twisted.ensureDeferred
async def test_gmail_app_password_required_holds_without_a_new_token(relay: Relay
                                                                     ) -> None:
    relay.start(first_retry=60, gmail=True)
    hold(relay, "gmail-app-password")
    relay.receive(2)
    await relay.idle()
    assert relay.state() == "SMTP AUTH disabled"
    assert "API controls" in relay.engine.status().accounts["sandbox"].fix
    await relay.advance(60)
    assert relay.attempts("AUTH") == 2 and relay.token_requests == 1
    assert len(relay.waiting()) == 2 and relay.failed() == []


@pytest_twisted.ensureDeferred
async def test_a_connection_lost_mid_message_is_that_messages_trouble(relay: Relay
                                                                      ) -> None:
    """Only failing to reach or set up the upstream holds the account; a drop in the
    middle of DATA retries that message and the next one goes on."""
    relay.start(first_retry=60)
    relay.sandbox.exchange.drop_next("DATA_BODY")
    first, second = relay.receive(2)
    await relay.idle()
    assert relay.state() == "ok"
    assert relay.spool.get(first).state == DEFERRED
    assert relay.mails == 1
    await relay.advance(60)
    assert relay.mails == 2


@pytest_twisted.ensureDeferred
async def test_send_as_bounce_names_the_refused_from_address_and_the_fix_once(
        relay: Relay) -> None:
    """Exchange refused the From: address (the envelope sender may send): the bounce
    names the address Exchange named, says it was the From:, gives the fix once, and
    does not claim the mail "stays queued" while it is being returned."""
    relay.start(first_retry=60)
    relay.sandbox.exchange.fail_next("END_OF_DATA", relay.sandbox.exchange.send_as_denied(
        relay.account.user, "ceo@example.com"))
    relay.receive(1)
    await relay.idle()
    import email

    [bounce] = [m for m in relay.sandbox.mailbox.messages if m.rcpt_to == (MAILBOX_SENDER,)]
    dsn = email.message_from_bytes(bounce.data)
    text = " ".join(dsn.get_payload()[0].get_payload(decode=True).decode().split())
    assert (f"Exchange did not let the upstream mailbox {relay.account.user} send as "
            f"ceo@example.com (the From: address of the message; its envelope sender was "
            f"{MAILBOX_SENDER})") in text, text
    assert text.count("Add-RecipientPermission") == 1, text
    assert "-Identity ceo@example.com" in text
    assert "stays queued" not in text and "stay queued" not in text
