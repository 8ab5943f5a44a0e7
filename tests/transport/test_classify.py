"""Reply classification: the real replies of Exchange Online and Gmail, and what they mean."""

from __future__ import annotations

import pytest

from xrelay.envelope import FailureKind, Outcome, Reply
from xrelay.transport.classify import failure_of, outcome_of, send_as_detail


@pytest.mark.parametrize("reply, outcome, failure", [
    (Reply(250, "2.6.0 <x@y> [InternalId=1] Queued mail for delivery"), Outcome.DELIVERED, FailureKind.NONE),
    (Reply(554, "5.2.252 SendAsDenied; relay@x not allowed to send as a@x; STOREDRV..."),
     Outcome.PERMANENT, FailureKind.SEND_AS_DENIED),
    (Reply(552, "5.3.4 Message size exceeds fixed maximum message size"), Outcome.PERMANENT, FailureKind.TOO_BIG),
    (Reply(421, "4.4.2 Message submission rate for this client has exceeded the configured limit"),
     Outcome.TEMPORARY, FailureKind.THROTTLED),
    (Reply(432, "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"), Outcome.TEMPORARY, FailureKind.THROTTLED),
    (Reply(550, "5.4.5 Daily user sending quota exceeded. - gsmtp"), Outcome.TEMPORARY, FailureKind.THROTTLED),
    (Reply(554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"),
     Outcome.TEMPORARY, FailureKind.THROTTLED),
    (Reply(452, "4.5.3 Too many recipients"), Outcome.TEMPORARY, FailureKind.NONE),
    (Reply(421, "4.7.0 Too many concurrent SMTP connections"), Outcome.TEMPORARY, FailureKind.THROTTLED),
    (Reply(451, "4.4.0 DNS query failed"), Outcome.TEMPORARY, FailureKind.NONE),
    (Reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found"), Outcome.PERMANENT, FailureKind.NONE),
    (Reply(354, "Start mail input"), Outcome.TEMPORARY, FailureKind.NONE),
])
def test_classification(reply: Reply, outcome: Outcome, failure: FailureKind) -> None:
    assert outcome_of(reply) is outcome
    assert failure_of(reply) is failure


def test_send_as_detail_says_how_to_fix_it() -> None:
    text = send_as_detail("relay@example.com", "scanner@example.com")
    assert ("Add-RecipientPermission -Identity scanner@example.com -Trustee "
            "relay@example.com -AccessRights SendAs") in text
    assert "rewrite_from = true" in text
