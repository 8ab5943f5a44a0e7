"""
Every transition of a spool entry and the retry timing, on a task.Clock.
"""

from __future__ import annotations

import email
import os

import pytest
from twisted.logger import globalLogPublisher

from xrelay.delivery.testing import (ACCEPTED, ScriptedTransport, fail_all,
                                     per_recipient)
from xrelay.envelope import FailureKind, Reply
from xrelay.spool import ACTIVE, DEFERRED, FAILED, QUEUED, UnknownEntry

from tests.delivery.delivery_harness import MESSAGE, START, account, config

BUSY = Reply(451, "4.7.500 Server busy. Please try again later.")
UNKNOWN = Reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by "
                "SMTP address lookup")
SEND_AS = Reply(554, "5.2.252 SendAsDenied; relay-main@example.com not allowed to send "
                "as scanner@example.com; STOREDRV.Submission.Exception")


def unfold(header: str) -> str:
    """A header value as one line (long ones are folded on the wire)."""
    return " ".join(header.split())


def test_queued_active_delivered(harness) -> None:
    harness.transport.hold = True
    engine = harness.start()
    entry_id = harness.receive(submit=False)
    assert harness.spool.get(entry_id).state == QUEUED
    engine.submitted(entry_id)
    assert harness.spool.get(entry_id).state == ACTIVE  # in flight
    sent = harness.transport.sent[0]
    assert sent.message.sender == "scanner@example.com"
    assert sent.message.recipients == ("a@example.org",)
    assert sent.data == MESSAGE
    harness.transport.release()
    with pytest.raises(UnknownEntry):
        harness.spool.get(entry_id)
    assert os.listdir(os.path.join(harness.spool.directory, "data")) == []
    assert engine.status().recent[-1].outcome == "delivered"
    assert engine.totals["delivered"] == 1


def test_temporary_failure_deferred_and_retried_with_backoff(harness) -> None:
    harness.start(config(first_retry=60, max_retry_interval=300))
    harness.transport.script = [fail_all(BUSY)] * 5
    entry_id = harness.receive()
    entry = harness.spool.get(entry_id)
    assert entry.state == DEFERRED
    assert entry.attempts == 1 and entry.last_reply == BUSY
    assert entry.next_attempt == START + 60
    # 60, 120, 240, then capped at 300.
    expected = [60, 120, 240, 300, 300]
    for i, delay in enumerate(expected[:-1]):
        harness.clock.advance(delay - 1)
        assert len(harness.transport.sent) == i + 1
        harness.clock.advance(1)
        assert len(harness.transport.sent) == i + 2
        assert harness.spool.get(entry_id).next_attempt == harness.clock.seconds() + \
            expected[i + 1]
    harness.clock.advance(300)
    assert len(harness.transport.sent) == 6
    with pytest.raises(UnknownEntry):
        harness.spool.get(entry_id)  # the sixth attempt was accepted


def test_jitter_spreads_retries(harness) -> None:
    harness.jitter = 0.0  # the earliest the jitter allows: 20 % early
    harness.start(config(first_retry=100))
    harness.transport.script = [fail_all(BUSY)]
    entry_id = harness.receive()
    assert harness.spool.get(entry_id).next_attempt == START + 80
    harness.jitter = 0.999999
    harness.transport.script = [fail_all(BUSY)]
    other = harness.receive()
    assert START + 119.99 < harness.spool.get(other).next_attempt < START + 120


def test_permanent_failure_bounced_and_kept_as_failed(harness) -> None:
    harness.start(config(bounce_to="it@example.com"))
    harness.transport.script = [fail_all(UNKNOWN)]
    entry_id = harness.receive()
    failed = harness.spool.get(entry_id)
    assert failed.state == FAILED
    assert failed.failed_recipients == (("a@example.org", UNKNOWN),)
    assert failed.last_reply == UNKNOWN
    # The bounce went out through the same account, as its own mailbox, to the sender
    # and the bounce_to copy.
    bounce = harness.transport.sent[1]
    assert bounce.message.sender == "relay-main@example.com"
    assert bounce.message.recipients == ("scanner@example.com", "it@example.com")
    dsn = email.message_from_bytes(bounce.data)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Auto-Submitted"] == "auto-replied"
    text, status, headers = dsn.get_payload()
    assert "a@example.org" in text.get_payload(decode=True).decode()
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.example.com"
    assert per_recipient["Final-Recipient"] == "rfc822; a@example.org"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.10"
    assert unfold(per_recipient["Diagnostic-Code"]) == f"smtp; 550 {UNKNOWN.text}"
    original = headers.get_payload(decode=True).decode()
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: Scan 42" in original and "Message-ID: <42@scanner>" in original
    assert "secret body" not in original
    assert b"\r\n" in bounce.data and b"\n" not in bounce.data.replace(b"\r\n", b"")
    # The bounce was delivered and removed; the failed entry stays for inspection.
    assert [e.entry_id for e in harness.spool.entries()] == [entry_id]


def test_partial_result_per_recipient(harness) -> None:
    engine = harness.start()
    harness.transport.script = [per_recipient({"b@example.org": UNKNOWN,
                                               "c@example.org": BUSY})]
    entry_id = harness.receive(recipients=("a@example.org", "b@example.org",
                                           "c@example.org"))
    entry = harness.spool.get(entry_id)
    assert entry.state == DEFERRED
    assert entry.recipients == ("c@example.org",)  # delivered and failed ones removed
    assert entry.failed_recipients == (("b@example.org", UNKNOWN),)
    bounce = email.message_from_bytes(harness.transport.sent[1].data)
    recipients = [b["Final-Recipient"] for b in bounce.get_payload()[1].get_payload()[1:]]
    assert recipients == ["rfc822; b@example.org"]  # one DSN, only the failed one
    assert engine.recent[-1].outcome == "partial"
    harness.clock.advance(60)
    assert harness.transport.sent[2].message.recipients == ("c@example.org",)
    assert harness.spool.get(entry_id).state == FAILED  # done, one recipient failed


def test_no_bounce_for_null_sender_or_for_a_bounce(harness) -> None:
    harness.start()
    harness.transport.script = [fail_all(UNKNOWN)]
    null = harness.receive(sender="")
    assert harness.spool.get(null).state == FAILED
    assert len(harness.transport.sent) == 1
    # A bounce that itself fails permanently is not bounced again.
    harness.transport.script = [fail_all(UNKNOWN), fail_all(UNKNOWN)]
    original = harness.receive()
    assert len(harness.transport.sent) == 3
    failed = list(harness.spool.entries(FAILED))
    assert len(failed) == 3
    bounce = [e for e in failed if e.bounce_of == original][0]
    assert bounce.sender == "relay-main@example.com"


def test_expired_after_max_age_bounced(harness) -> None:
    harness.start(config(first_retry=3600, max_retry_interval=3600, max_age=4 * 3600))
    harness.transport.script = [fail_all(BUSY)] * 10
    entry_id = harness.receive()
    for _ in range(3):
        harness.clock.advance(3600)
        assert harness.spool.get(entry_id).state == DEFERRED
    harness.clock.advance(3600)  # the attempt at 4 h fails: too old now
    assert harness.spool.get(entry_id).state == FAILED
    dsn = email.message_from_bytes(harness.transport.sent[-1].data)
    block = dsn.get_payload()[1].get_payload()[1]
    assert block["Status"] == "4.4.7"
    assert unfold(block["Diagnostic-Code"]) == f"smtp; 451 {BUSY.text}"
    assert "queued too long" in dsn.get_payload()[0].get_payload(decode=True).decode()


@pytest.mark.parametrize("kind", [FailureKind.NEEDS_SIGN_IN, FailureKind.AUTHENTICATION])
def test_token_trouble_defers_never_bounces_and_resumes(harness, kind) -> None:
    engine = harness.start(config(first_retry=600))
    refused = Reply(535, "5.7.139 Authentication unsuccessful, the request did not meet "
                    "the criteria to be authenticated successfully.")
    harness.transport.script = [fail_all(refused, kind)]
    entry_id = harness.receive()
    other = harness.receive()
    entry = harness.spool.get(entry_id)
    assert entry.state == DEFERRED and entry.last_reply == refused
    # The account is held: the second message waits instead of failing the same way.
    assert len(harness.transport.sent) == 1
    assert harness.spool.get(other).state == QUEUED
    engine.resume_account("main")  # an operator signed in again
    assert len(harness.transport.sent) == 3
    assert list(harness.spool.entries()) == []


def test_send_as_denied_bounce_explains(harness) -> None:
    """By default a Send As refusal bounces at once, and the bounce names the fix."""
    engine = harness.start()
    harness.transport.script = [fail_all(SEND_AS, FailureKind.SEND_AS_DENIED,
                                         detail="Grant Send As or use rewrite_from.")]
    entry_id = harness.receive()
    assert harness.spool.get(entry_id).state == FAILED
    assert engine.status().accounts["main"].held_senders == ()
    dsn = email.message_from_bytes(harness.transport.sent[1].data)
    text = dsn.get_payload()[0].get_payload(decode=True).decode()
    assert "Send As" in text and "rewrite_from = true" in text
    assert "Add-RecipientPermission -Identity scanner@example.com -Trustee " \
        "relay-main@example.com" in text
    assert dsn.get_payload()[1].get_payload()[1]["Status"] == "5.2.252"


def test_send_as_denied_holds_the_sender_then_the_bounce_explains(harness) -> None:
    """delivery.send_as_denied = "hold": the sender's mail waits (hold this sender, with
    the fix) until max_age, then the bounce says how to grant Send As."""
    engine = harness.start(config(first_retry=60, max_age=100, send_as_denied="hold"))
    harness.transport.script = [fail_all(SEND_AS, FailureKind.SEND_AS_DENIED,
                                         detail="Grant Send As or use rewrite_from.")] * 3
    entry_id = harness.receive()
    assert harness.spool.get(entry_id).state == DEFERRED
    status = engine.status().accounts["main"]
    assert status.held_senders == ("scanner@example.com",)
    assert status.state == "ok"  # the account itself still works for other senders
    harness.clock.advance(60)
    assert harness.spool.get(entry_id).state == DEFERRED and len(harness.transport.sent) == 2
    harness.clock.advance(120)  # past max_age: now it is bounced, with the fix
    assert harness.spool.get(entry_id).state == FAILED
    dsn = email.message_from_bytes(harness.transport.sent[3].data)
    text = dsn.get_payload()[0].get_payload(decode=True).decode()
    assert "Send As" in text and "rewrite_from = true" in text
    assert "Add-RecipientPermission -Identity scanner@example.com -Trustee " \
        "relay-main@example.com" in text
    status_part = dsn.get_payload()[1].get_payload()[1]
    assert status_part["Status"] == "4.4.7"  # expired, with the upstream's last word:
    assert "5.2.252 SendAsDenied" in status_part["Diagnostic-Code"]


def test_throttled_slows_the_account(harness) -> None:
    harness.start()
    harness.transport.script = [fail_all(Reply(452, "4.3.2 Too many messages"),
                                         FailureKind.THROTTLED, retry_after=300)]
    first = harness.receive()
    second = harness.receive()
    assert len(harness.transport.sent) == 1
    assert harness.spool.get(first).next_attempt == START + 300
    harness.clock.advance(299)
    assert len(harness.transport.sent) == 1
    harness.clock.advance(1)
    assert len(harness.transport.sent) == 3
    assert list(harness.spool.entries()) == []
    assert second


def test_unroutable_entry_deferred(harness) -> None:
    harness.start()
    entry_id = harness.receive(sender="someone@elsewhere.net", account="")
    entry = harness.spool.get(entry_id)
    assert entry.state == DEFERRED and entry.last_reply.text.startswith("4.3.5")
    assert harness.transport.sent == []


def test_transport_error_is_temporary(harness) -> None:
    harness.start()

    def explode(message):
        raise RuntimeError("bug")
    harness.transport.script = [explode]
    entry_id = harness.receive()
    assert harness.spool.get(entry_id).state == DEFERRED


def test_rewrite_from(harness) -> None:
    harness.start(config(account(rewrite_from=True)))
    entry_id = harness.receive()
    sent = harness.transport.sent[0]
    assert sent.message.sender == "relay-main@example.com"
    assert sent.data.startswith(b"From: relay-main@example.com\r\n"
                                b"Reply-To: Scanner <scanner@example.com>\r\n")
    assert sent.data.endswith(b"\r\n\r\nsecret body\r\n")
    assert sent.message.size == len(sent.data)
    assert os.listdir(os.path.join(harness.spool.directory, "tmp")) == []
    assert entry_id


def test_recovery_on_start(harness) -> None:
    harness.transport.hold = True
    harness.start(config(first_retry=600))
    harness.transport.script = [fail_all(BUSY)]
    deferred = harness.receive()
    active = harness.receive()
    assert harness.spool.get(active).state == ACTIVE
    # Crash: a new spool and engine on the same folder; nothing was stopped cleanly.
    harness.transports["main"] = ScriptedTransport()
    engine = harness.start(config(first_retry=600))
    assert [s.message.entry_id for s in harness.transport.sent] == [active]
    assert harness.spool.get(deferred).state == DEFERRED
    harness.clock.advance(600)
    assert list(harness.spool.entries()) == []
    assert engine.totals["delivered"] == 2


def test_shutdown_waits_for_attempts_in_flight(harness) -> None:
    harness.transport.hold = True
    engine = harness.start()
    entry_id = harness.receive()
    stopped = engine.stopService()
    assert not stopped.called
    late = harness.receive()  # nothing new starts after stop
    assert len(harness.transport.sent) == 1
    harness.transport.release()
    assert stopped.called
    assert harness.spool.get(late).state == QUEUED
    with pytest.raises(UnknownEntry):
        harness.spool.get(entry_id)


def test_shutdown_wait_is_bounded(harness) -> None:
    harness.transport.hold = True
    engine = harness.start()
    entry_id = harness.receive()
    stopped = engine.stopService()
    harness.clock.advance(29)
    assert not stopped.called
    harness.clock.advance(1)
    assert stopped.called
    assert harness.spool.get(entry_id).state == ACTIVE
    harness.transports["main"] = ScriptedTransport()
    harness.start()  # the next start puts it back in the queue and delivers it
    assert list(harness.spool.entries()) == []


def test_deliver_now_hands_back_what_was_not_delivered(harness) -> None:
    """Pass-through, nothing delivered: the device is told and keeps the message."""
    engine = harness.start()
    for script in (fail_all(SEND_AS, FailureKind.SEND_AS_DENIED), fail_all(BUSY)):
        harness.transport.script = [script]
        entry_id = harness.receive(submit=False)
        result = engine.deliver_now(entry_id).result
        assert result.handed_back
        assert result.recipients[0].reply in (SEND_AS, BUSY)
        with pytest.raises(UnknownEntry):  # neither retried nor bounced
            harness.spool.get(entry_id)
    harness.clock.advance(3600)
    assert list(harness.spool.entries()) == [] and len(harness.transport.sent) == 2
    assert [r.outcome for r in engine.status().recent] == ["handed back", "handed back"]


def test_deliver_now_keeps_what_was_partly_delivered(harness) -> None:
    """Some recipients delivered: the device hears 250, so the relay owns the rest."""
    engine = harness.start()
    harness.transport.script = [per_recipient({"b@example.org": BUSY})]
    entry_id = harness.receive(recipients=("a@example.org", "b@example.org"),
                               submit=False)
    result = engine.deliver_now(entry_id).result
    assert not result.handed_back
    entry = harness.spool.get(entry_id)
    assert entry.state == DEFERRED and entry.recipients == ("b@example.org",)
    harness.clock.advance(60)  # retried normally
    with pytest.raises(UnknownEntry):
        harness.spool.get(entry_id)


def test_deliver_now_joins_an_attempt_in_flight(harness) -> None:
    harness.transport.hold = True
    engine = harness.start()
    entry_id = harness.receive()
    result = engine.deliver_now(entry_id)
    assert not result.called and len(harness.transport.sent) == 1
    harness.transport.release()
    assert result.result.recipients[0].reply == ACCEPTED


def test_status_and_outcome_log(harness) -> None:
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        engine = harness.start()
        harness.transport.script = [fail_all(BUSY)]
        entry_id = harness.receive(recipients=("a@example.org", "b@example.org"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    outcome = [e for e in events if e.get("outcome") == "deferred"]
    assert len(outcome) == 1
    assert outcome[0]["entry_id"] == entry_id
    assert outcome[0]["sender"] == "scanner@example.com"
    assert outcome[0]["account"] == "main"
    assert outcome[0]["recipient_count"] == 2
    assert outcome[0]["upstream_reply"] == str(BUSY)
    harness.clock.advance(30)
    status = engine.status()
    assert status.counts == {"queued": 0, "active": 0, "deferred": 1, "failed": 0}
    assert status.oldest_age == 30
    assert status.recent[-1].reply == str(BUSY)
    assert status.totals["deferred"] == 1


def test_daily_budget_count_and_hold_survive_a_restart(harness, tmp_path) -> None:
    """recipients_per_day is counted on disk: a restart neither forgets what was sent
    nor sends the rest at once; the hold shows, with the time delivery resumes."""
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observer(event) -> None:
        lines.append(formatEvent(event))
    globalLogPublisher.addObserver(observer)
    state_dir = str(tmp_path / "state")
    cfg = config(account(recipients_per_day=3))

    def start():
        from xrelay.delivery import DeliveryEngine
        from xrelay.spool import Spool, run_inline
        harness.spool = Spool(str(tmp_path / "spool"), run_blocking=run_inline)
        harness.engine = DeliveryEngine(cfg, harness.spool, harness.transports,
                                        clock=harness.clock, random=lambda: 0.5,
                                        state_dir=state_dir)
        harness.engine.startService()
        return harness.engine

    engine = start()
    for _ in range(5):
        harness.receive()
    assert len(harness.transport.sent) == 3 and len(list(harness.spool.entries())) == 2
    status = engine.status().accounts["main"]
    assert status.recipients_today == 3 and status.recipients_left == 0
    assert status.label.startswith("daily limit reached (resumes at ")
    assert sum("daily limit reached" in line for line in lines) == 1  # logged once
    harness.receive()  # more mail while held: no second log line
    assert sum("daily limit reached" in line for line in lines) == 1
    engine.stopService()

    harness.clock.advance(3600)
    engine = start()  # the restart
    assert len(harness.transport.sent) == 3  # still held: the count survived
    status = engine.status().accounts["main"]
    assert status.recipients_today == 3 and status.state == "daily limit reached"
    harness.clock.advance(86400 - 3600)  # the day of the first three is over
    assert len(harness.transport.sent) == 6 and list(harness.spool.entries()) == []
    globalLogPublisher.removeObserver(observer)


def test_a_provider_hold_survives_a_restart(harness, tmp_path) -> None:
    """Gmail's 550-5.4.5 holds the account until the rolling day allows it; a restart
    does not forget that and send (or bounce) the queue at once."""
    from xrelay.delivery import DeliveryEngine
    from xrelay.spool import Spool, run_inline

    daily = Reply(550, "5.4.5 Daily user sending limit exceeded. For more information "
                  "on Gmail\n5.4.5 sending limits go to "
                  "https://support.google.com/a/answer/166852 - gsmtp")
    state_dir = str(tmp_path / "state")

    def start():
        harness.spool = Spool(str(tmp_path / "spool"), run_blocking=run_inline)
        harness.engine = DeliveryEngine(config(first_retry=60), harness.spool,
                                        harness.transports, clock=harness.clock,
                                        random=lambda: 0.5, state_dir=state_dir)
        harness.engine.startService()
        return harness.engine

    engine = start()
    harness.receive()  # delivered: the rolling day starts now
    harness.transport.script = [fail_all(daily)]
    harness.clock.advance(600)
    harness.receive()
    harness.receive()
    assert len(harness.transport.sent) == 2
    label = engine.status().accounts["main"].label
    assert label.startswith("daily limit reached (resumes at ")
    engine.stopService()

    harness.clock.advance(3600)
    engine = start()
    assert engine.status().accounts["main"].label == label
    harness.clock.advance(7200)  # first_retry long past: still held, nothing sent
    assert len(harness.transport.sent) == 2
    assert sorted(e.state for e in harness.spool.entries()) == [DEFERRED, QUEUED]
    harness.clock.advance(86400 - 600 - 3600 - 7200)  # the day frees up: probe, resume
    assert len(harness.transport.sent) == 4 and list(harness.spool.entries()) == []
    assert engine.status().accounts["main"].state == "ok"


def test_the_budget_journal_keeps_only_the_rolling_day(harness, tmp_path, monkeypatch
                                                       ) -> None:
    import xrelay.delivery.accounts as accounts_module
    from xrelay.delivery import DeliveryEngine
    from xrelay.spool import Spool, run_inline

    monkeypatch.setattr(accounts_module, "JOURNAL_COMPACT_EVERY", 5)
    harness.spool = Spool(str(tmp_path / "spool"), run_blocking=run_inline)
    harness.engine = DeliveryEngine(config(account(recipients_per_day=1000)),
                                    harness.spool, harness.transports, clock=harness.clock,
                                    random=lambda: 0.5, state_dir=str(tmp_path / "state"))
    harness.engine.startService()
    for _ in range(4):
        harness.receive()
    harness.clock.advance(86400)  # those four age out of the rolling day
    for _ in range(3):
        harness.receive()
    journal = tmp_path / "state" / "accounts" / "main.day"
    lines = journal.read_text().splitlines()
    assert len(lines) == 3  # compacted at the 5th append (7 lines without it)
    assert all(float(line.split()[0]) >= START + 86400 for line in lines)
    assert harness.engine.status().accounts["main"].recipients_today == 3
