"""The plan shown before anything is asked: each method's permissions, and bad input."""

from __future__ import annotations

import pytest

from xrelay.config import SetupConfig
from xrelay.setup.plan import BadRequest, SetupRequest, make_plan


@pytest.mark.parametrize("method, large, expected", [
    ("smtp", False, ["Office 365 Exchange Online: SMTP.SendAsApp (application)"]),
    ("graph", False, ["Microsoft Graph: Mail.Send (application)"]),
    ("graph", True, ["Microsoft Graph: Mail.Send (application)",
                     "Microsoft Graph: Mail.ReadWrite (application)"]),
    ("delegated", False, ["Office 365 Exchange Online: SMTP.Send (delegated)",
                          "Microsoft Graph: offline_access (delegated)"]),
])
def test_each_method_asks_for_its_permissions_only(method, large, expected) -> None:
    plan = make_plan(SetupRequest("relay@contoso.com", method, large_messages=large),
                     SetupConfig(), "relay.contoso.com")
    assert [p.text() for p in plan.permissions] == expected
    text = "\n".join(plan.lines())
    assert "never stored" in text and "Application.ReadWrite.All" in text
    assert ("Exchange.Manage" in text) == (method == "smtp")
    assert plan.request.account_name == "relay"


@pytest.mark.parametrize("args, words", [
    (("not-an-address",), "is not a mailbox address"),
    (("relay@contoso.com", "imap"), "method 'imap' is unknown"),
    (("relay@contoso.com", "smtp", "../x"), "cannot be used"),
])
def test_bad_requests_name_the_fix(args, words) -> None:
    with pytest.raises(BadRequest, match=words):
        SetupRequest(*args)
