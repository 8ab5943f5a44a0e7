"""
The message trace end to end: a real relay (makeService) delivering into the sandbox
records a delivered message, a SendAsDenied bounce and a deferred one; the installed
`xrelay trace` command (a subprocess, reading the database read-only while the relay
writes it, and again after the relay stopped) finds each with the right outcome and the
upstream's reply, filters by --to, --from, --since and --status, and tells one
message's story attempt by attempt.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest_twisted

from tests.admin.conftest import start_relay, write_config
from tests.admin.test_web import until
from tests.operations.test_commands import smtp_send, xrelay
from xrelay.history import AcceptedMessage
from xrelay.operations.queue import QueueOperations

#: Exchange's reply to a sender the mailbox may not send as (the sandbox's text).
SEND_AS_DENIED = "554 5.2.252 SendAsDenied"
#: The temporary refusal the queue command tests use.
LATER = "451 4.2.1 Mailbox temporarily unavailable"


def deny_send_as_except(world: Any, allowed: str) -> None:
    """The sandbox app may send only as its mailbox and C{allowed}."""
    sb = world.sandbox
    mailbox = sb.default_account()["user"]
    sb.exchange.app_mailboxes[sb.default_app.client_id][mailbox.lower()] = False
    sb.exchange.grant_send_as(mailbox, allowed)


async def trace(world: Any, *args: str) -> Any:
    code, out, err = await xrelay(world, "trace", *args)
    assert code == 0, err
    return json.loads(out) if "--json" in args else out


@pytest_twisted.ensureDeferred
async def test_trace_finds_delivered_bounced_and_deferred_messages(world) -> None:
    write_config(world, first_retry=600)
    deny_send_as_except(world, "printer@sandbox.example")
    world.sandbox.exchange.reject_recipient("later@example.net", LATER)
    relay = start_relay(world)

    delivered = await smtp_send(world.smtp_port, "printer@sandbox.example", "a@example.net")
    denied = await smtp_send(world.smtp_port, "scanner@example.com", "b@example.net")
    deferred = await smtp_send(world.smtp_port, "printer@sandbox.example",
                               "later@example.net")
    totals = relay.delivery.totals  # counted when the engine reports to the history
    await until(lambda: (totals["delivered"], totals["failed"], totals["deferred"])
                == (2, 1, 1))  # the delivered message and the bounce
    # One message from three hours ago, as the writer would have recorded it then.
    relay.history.received(AcceptedMessage(
        "20200101T000000.000000-1-000001", time.time() - 3 * 3600, "192.0.2.9", None,
        "old@example.org", ("old@example.net",), 100, "sandbox"))
    await relay.history.flush()

    # While the relay runs (and holds the database open for writing):
    found = {m["entry_id"]: m for m in await trace(world, "--json")}
    assert set(found) == {delivered, denied, deferred, "20200101T000000.000000-1-000001"}
    d = found[delivered]
    assert (d["outcome"], d["status"]) == ("delivered", "delivered")
    assert d["last_reply"].startswith("250 2.6.0 <") and "Queued mail for delivery" in \
        d["last_reply"]
    assert d["upstream_id"] and d["last_reply"].split()[2] == d["upstream_id"]
    assert d["subject"] == "for a@example.net" and d["client"] == "127.0.0.1"
    assert d["recipients"] == ["a@example.net"] and d["account"] == "sandbox"
    b = found[denied]
    assert (b["outcome"], b["status"]) == ("bounced", "failed")
    assert b["last_reply"].startswith(SEND_AS_DENIED)
    w = found[deferred]
    assert (w["outcome"], w["status"], w["last_reply"]) == ("waiting", "waiting", LATER)

    # Filters.
    assert [m["entry_id"] for m in await trace(world, "--json", "--to", "later@")] == \
        [deferred]
    assert [m["entry_id"] for m in await trace(world, "--json", "--from",
                                               "*@example.com")] == [denied]
    assert [m["entry_id"] for m in await trace(world, "--json", "--from", "OLD")] == \
        ["20200101T000000.000000-1-000001"]
    assert [m["entry_id"] for m in await trace(world, "--json", "--status",
                                               "delivered")] == [delivered]
    assert {m["entry_id"] for m in await trace(world, "--json", "--status", "failed")} \
        == {denied}
    assert {m["entry_id"] for m in await trace(world, "--json", "--status", "waiting")} \
        == {deferred, "20200101T000000.000000-1-000001"}
    assert {m["entry_id"] for m in await trace(world, "--json", "--since", "2h")} == \
        {delivered, denied, deferred}
    assert len(await trace(world, "--json", "--since", "4h")) == 4
    tomorrow = time.strftime("%Y-%m-%d", time.localtime(time.time() + 86400))
    assert await trace(world, "--json", "--since", tomorrow) == []
    assert [m["entry_id"] for m in await trace(world, "--json", "--to", "*@example.net",
                                               "--status", "delivered")] == [delivered]

    # The plain listing: one line per message, the reply on it.
    text = await trace(world, "--to", "b@example.net")
    line = next(row for row in text.splitlines() if denied in row)
    assert "<scanner@example.com> -> b@example.net\tbounced\t554 5.2.252" in line

    # A second attempt of the deferred message, then its story lists both.
    await QueueOperations(relay.spool, relay.config, relay.delivery).retry(deferred)
    await until(lambda: relay.delivery.totals["deferred"] == 2)
    await relay.history.flush()
    story = await trace(world, deferred)
    assert "attempt 1 at " in story and "attempt 2 at " in story
    assert story.count(f"later@example.net: deferred: {LATER}") == 2
    assert f"message {deferred}: waiting" in story
    as_json = await trace(world, "--json", deferred)
    assert [a["outcome"] for a in as_json["attempt_list"]] == ["deferred", "deferred"]

    # The bounced message's story names the bounce and where it went.
    story = await trace(world, denied)
    assert "attempt 1 at " in story and "b@example.net: failed: 554 5.2.252 SendAsDenied" \
        in story
    assert "bounce " in story and " to scanner@example.com: delivered" in story

    # An operator deletes the deferred one: the trace says so.
    await QueueOperations(relay.spool, relay.config, relay.delivery).delete(deferred)
    await relay.history.flush()
    (gone,) = await trace(world, "--json", "--to", "later@")
    assert (gone["outcome"], gone["status"]) == ("deleted", "failed")

    # With the relay stopped, the same answers.
    await relay.stopService()
    found = {m["entry_id"]: m["outcome"] for m in await trace(world, "--json")}
    assert found[delivered] == "delivered" and found[denied] == "bounced"
    code, out, err = await xrelay(world, "trace", "no-such-entry")
    assert code == 1 and "the trace knows no message no-such-entry" in err
    code, out, err = await xrelay(world, "trace", "--since", "yesterday")
    assert code == 2 and "give a duration" in err


@pytest_twisted.ensureDeferred
async def test_a_delete_with_the_daemon_stopped_is_in_the_trace(world) -> None:
    """`xrelay queue delete` on a stopped relay's spool writes to the history file."""
    write_config(world, first_retry=600)
    world.sandbox.exchange.reject_recipient("later@example.net", LATER)
    relay = start_relay(world)
    entry_id = await smtp_send(world.smtp_port, "printer@sandbox.example",
                               "later@example.net")
    await until(lambda: relay.delivery.totals["deferred"] == 1)
    await relay.stopService()
    (before,) = await trace(world, "--json")
    assert before["outcome"] == "waiting"

    code, out, err = await xrelay(world, "queue", "delete", entry_id)
    assert (code, out) == (0, f"{entry_id}: deleted\n"), err
    (after,) = await trace(world, "--json")
    assert (after["entry_id"], after["outcome"]) == (entry_id, "deleted")
    assert "finished " in await trace(world, entry_id)
