"""
The public token-source doubles in L{xrelay.transport.testing} keep the promises of
L{ITokenSource}, so an embedder's tests (and the admin page, the metrics) can read their
C{status()} like a real source's.
"""

from __future__ import annotations

from zope.interface.verify import verifyObject

from xrelay.interfaces import ITokenSource
from xrelay.records import TokenStatus
from xrelay.transport.testing import ClientCredentialsTokenSource, ScriptedTokenSource


def test_the_scripted_source_reports_a_token_status() -> None:
    source = ScriptedTokenSource(["token-1"], account_name="printers")
    assert verifyObject(ITokenSource, source)
    before = source.status()
    assert isinstance(before, TokenStatus)
    assert (before.account, before.state) == ("printers", "no token")
    source.access_token()
    assert source.status().state == "ok"
    source.token_rejected("token-1")
    assert source.status().state == "no token"


def test_the_client_credentials_source_reports_a_token_status() -> None:
    source = ClientCredentialsTokenSource("https://login.invalid/token", "app", "secret",
                                          "scope", None, reactor=None, account_name="main")
    assert verifyObject(ITokenSource, source)
    status = source.status()
    assert isinstance(status, TokenStatus)
    assert (status.account, status.state, status.flow) == ("main", "no token",
                                                           "client_credentials")
    assert "secret" not in repr(status)
