"""
The AADSTS table: every row names a refusal state and a fix that fills in from the
account; "needs sign-in" only where a person can sign in (delegated flows).
"""

from __future__ import annotations

import pytest

from xrelay.addresses import SenderPattern
from xrelay.config import AccountConfig
from xrelay.tokens.aadsts import REFUSALS, aadsts_codes, explain
from xrelay.tokens.status import REFUSED, TokenState


def account(flow: str, **changes: object) -> AccountConfig:
    values: dict[str, object] = dict(
        name="main", provider="microsoft", user="relay@contoso.com", flow=flow,
        senders=(SenderPattern.parse("*"),), tenant="contoso.onmicrosoft.com",
        client_id="11111111-2222-3333-4444-555555555555",
        client_secret_file="/etc/xrelay/secret.txt")
    values.update(changes)
    return AccountConfig(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("row", REFUSALS, ids=lambda r: str(r.codes[0]))
@pytest.mark.parametrize("flow", ["client_credentials", "auth_code"])
def test_every_row_has_a_refusal_state_and_a_fix(row, flow) -> None:
    state, fix, meaning = explain(f"invalid_grant: AADSTS{row.codes[0]}: text", account(flow))
    assert state in REFUSED
    assert meaning == row.meaning
    assert "{" not in fix and fix
    if flow == "client_credentials":
        assert state is not TokenState.NEEDS_SIGN_IN


def test_the_named_states() -> None:
    app = account("client_credentials")
    assert explain("invalid_client: AADSTS7000215: Invalid client secret", app)[0] is \
        TokenState.CLIENT_SECRET_REJECTED
    assert explain("invalid_client: AADSTS7000222: expired", app)[0] is \
        TokenState.CLIENT_SECRET_EXPIRED
    assert explain("invalid_client: AADSTS700027: cert", app)[0] is \
        TokenState.CERTIFICATE_REJECTED
    assert explain("unauthorized_client: AADSTS700016: no app", app)[0] is \
        TokenState.APP_NOT_FOUND
    assert explain("invalid_grant: AADSTS50173: revoked", app)[0] is \
        TokenState.CREDENTIALS_REFUSED
    assert explain("invalid_client: something new", app)[0] is TokenState.CREDENTIALS_REFUSED
    user = account("refresh_token", refresh_token_file="/etc/xrelay/rt.txt")
    assert explain("invalid_grant: AADSTS700082: The refresh token has expired", user) == (
        TokenState.REFRESH_TOKEN_EXPIRED,
        "run `xrelay login main` (or Sign in on the admin page), or put a new refresh "
        "token in /etc/xrelay/rt.txt", "the refresh token has expired")
    assert explain("interaction_required: AADSTS50076: MFA", user)[0] is TokenState.MFA_REQUIRED
    assert explain("invalid_grant: something new", user)[0] is TokenState.NEEDS_SIGN_IN
    assert explain("", user, codes=[53003])[0] is TokenState.CONDITIONAL_ACCESS
    assert aadsts_codes("AADSTS50076: x; AADSTS50079") == [50076, 50079]
