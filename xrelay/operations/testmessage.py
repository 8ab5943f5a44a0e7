"""
C{xrelay send-test}: one small message through the running relay and one upstream
account, with the upstream's own reply as the answer.

The message is spooled like any other (so it is durable and visible in the queue) and
then delivered at once through the delivery engine's pass-through path; the operator
sees exactly what Exchange Online or Gmail said.  It never bypasses the account's token
or Send As rules: a test that passes here means real mail will pass.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

from xrelay.envelope import Envelope, Outcome
from xrelay.operations.errors import ControlRefusal

__all__ = ["send_test_message", "test_message_bytes"]


def test_message_bytes(sender: str, to: str, hostname: str, account: str) -> bytes:
    now = time.time()
    lines = [
        f"From: xrelay test <{sender}>",
        f"To: <{to}>",
        f"Subject: xrelay test message via account {account}",
        f"Date: {email.utils.formatdate(now)}",
        f"Message-ID: {email.utils.make_msgid('xrelay-test', domain=hostname)}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is a test message sent by `xrelay send-test` through the relay "
        f"{hostname}",
        f"and its upstream account {account!r}.  If you read this, relaying works.",
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


async def send_test_message(relay: Any, to: str, account_name: str | None = None
                            ) -> dict[str, Any]:
    """
    Spool and deliver a test message; the result says what the upstream replied.

    @raise xrelay.operations.errors.ControlRefusal: unknown or missing account, or a
        bad address.
    """

    config = relay.config
    if "@" not in to or any(c in to for c in "<>\r\n ") or len(to) > 254:
        raise ControlRefusal(f"{to!r} is not an address; write --to user@example.com")
    if not config.accounts:
        raise ControlRefusal("no [[accounts]] are configured")
    if account_name is None:
        account_name = config.relay.default_account or config.accounts[0].name
    try:
        account = config.account(account_name)
    except KeyError:
        names = ", ".join(a.name for a in config.accounts)
        raise ControlRefusal(f"no account {account_name!r}; the accounts are: {names}"
                             ) from None
    envelope = Envelope(sender=account.user, recipients=(to,), client_address="local",
                        client_helo="xrelay send-test", account=account.name,
                        received_at=time.time())
    incoming = relay.spool.incoming(envelope)
    incoming.write(test_message_bytes(account.user, to, config.server.hostname,
                                      account.name))
    entry_id = await incoming.commit()
    result = await relay.delivery.deliver_now(entry_id)
    outcomes = {r.outcome for r in result.recipients}
    reply = str(result.recipients[0].reply) if result.recipients else result.detail
    if outcomes == {Outcome.DELIVERED}:
        outcome = "delivered"
    elif Outcome.PERMANENT in outcomes:
        outcome = "failed"
    else:
        outcome = "deferred"
    return {"entry_id": entry_id, "account": account.name, "sender": account.user,
            "outcome": outcome, "reply": reply, "detail": result.detail}
