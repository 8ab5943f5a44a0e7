"""
"Sign in with Google" in the token service: the authorization code flow with PKCE S256
against the sandbox's Google authorization and token endpoints (the sign-in form driven
with HTTP like a browser), the refresh token kept in the encrypted cache, the account
resuming, and each way a sign-in can go wrong leaving the account as it was.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import pytest
import pytest_twisted
from twisted.internet import threads

from xrelay.addresses import SenderPattern
from xrelay.config import AccountConfig
from xrelay.sandbox import Sandbox
from xrelay.tokens import NeedsSignIn, SignInFailed, TokenService
from xrelay.tokens.cache import KEY_ENVIRONMENT_VARIABLE

from .conftest import REDIRECT_URI, config_for, secret_file
from .test_microsoft import browser_sign_in

Make = Callable[..., TokenService]
EMAIL = "scanner@example.org"
GOOGLE_PASSWORD = "a long google password 9"


@pytest.fixture(autouse=True)
def _own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENVIRONMENT_VARIABLE, raising=False)


def google_sign_in_account(sb: Sandbox, directory: Path, flow: str = "auth_code",
                           **changes: Any) -> AccountConfig:
    """A Google OAuth client (web application) and user in the sandbox, and an account."""
    client = sb.google.register_client(redirect_uris=[REDIRECT_URI])
    if EMAIL.lower() not in sb.google.users:
        sb.google.add_user(EMAIL, GOOGLE_PASSWORD)
    values: dict[str, Any] = dict(
        name="gmail", provider="google", user=EMAIL, flow=flow,
        senders=(SenderPattern.parse(EMAIL),), client_id=client.client_id,
        client_secret_file=secret_file(directory, f"gsecret-{client.client_id[:6]}.txt",
                                       client.client_secret),
        authority=sb.google_authority,
        authorization_url=f"{sb.google_authority}/o/oauth2/v2/auth",
        smtp_host=sb.smtp_host, smtp_port=sb.gmail_smtp_port, ca_file=sb.ca_file,
    )
    values.update(changes)
    return AccountConfig(**values)


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


@pytest_twisted.inlineCallbacks
def google_sign_in(service: TokenService, sb: Sandbox, name: str = "gmail",
                   as_user: str = EMAIL, password: str = GOOGLE_PASSWORD) -> Any:
    """Start, sign in on the sandbox's Google page, come back: the finish Deferred's result."""
    url, flow = yield service.start_auth_code(name, REDIRECT_URI)
    location = yield threads.deferToThread(browser_sign_in, url, sb.ca_file, as_user, password)
    assert location.startswith(REDIRECT_URI + "?")
    status = yield service.finish_auth_code(name, flow, query_of(location))
    return status


@pytest_twisted.inlineCallbacks
def test_sign_in_with_google_stores_the_refresh_token_and_resumes(
        sandbox: Sandbox, tmp_path: Path, services: Make):
    account = google_sign_in_account(sandbox, tmp_path)
    state = tmp_path / "state"
    service = services(config_for(state, account))
    resumed: list[str] = []
    service.on_signed_in(resumed.append)
    with pytest.raises(NeedsSignIn) as e:
        yield service.sources["gmail"].access_token()
    assert f"use Sign in with Google on the admin page as {EMAIL}" in str(e.value)
    assert "no sign-in for scanner@example.org is stored" in str(e.value)

    url, flow = yield service.start_auth_code("gmail", REDIRECT_URI)
    parts = urlparse(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == account.authorization_url
    query = query_of(url)
    assert set(query) == {"response_type", "client_id", "redirect_uri", "scope", "state",
                          "code_challenge", "code_challenge_method", "access_type",
                          "prompt", "login_hint"}
    assert query["response_type"] == "code" and query["client_id"] == account.client_id
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["scope"] == "https://mail.google.com/ openid email"
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == base64.urlsafe_b64encode(hashlib.sha256(
        flow["code_verifier"].encode()).digest()).rstrip(b"=").decode()
    assert 43 <= len(flow["code_verifier"]) <= 128
    assert query["access_type"] == "offline" and query["prompt"] == "consent"
    assert query["login_hint"] == EMAIL and query["state"] == flow["state"]
    assert len(query["state"]) >= 32

    location = yield threads.deferToThread(browser_sign_in, url, sandbox.ca_file, EMAIL,
                                           GOOGLE_PASSWORD)
    status = yield service.finish_auth_code("gmail", flow, query_of(location))
    assert status.state == "ok" and status.account == "gmail"
    assert resumed == ["gmail"]
    token = yield service.sources["gmail"].access_token()
    record = sandbox.google.check_access_token(token)
    assert record is not None and record.email == EMAIL
    (issued,) = [r for r in sandbox.google.refresh_tokens.values() if r.valid]
    cache = (state / "tokens" / "gmail.cache").read_bytes()
    assert issued.token.encode() not in cache and token.encode() not in cache

    # one use: the same return again is refused, and the account stays ok
    with pytest.raises(SignInFailed) as again:
        yield service.finish_auth_code("gmail", flow, query_of(location))
    assert "already used" in str(again.value)
    assert service.status()["gmail"].state == "ok"

    # another process (a restart) refreshes with the stored refresh token
    restarted = services(config_for(state, account), start=False)
    fresh = yield restarted.sources["gmail"].access_token()
    assert fresh != token and sandbox.google.check_access_token(fresh).email == EMAIL


@pytest_twisted.inlineCallbacks
def test_forged_state_is_refused_and_spends_the_flow(sandbox: Sandbox, tmp_path: Path,
                                                     services: Make):
    service = services(config_for(tmp_path / "state", google_sign_in_account(sandbox, tmp_path)))
    url, flow = yield service.start_auth_code("gmail", REDIRECT_URI)
    location = yield threads.deferToThread(browser_sign_in, url, sandbox.ca_file, EMAIL,
                                           GOOGLE_PASSWORD)
    params = query_of(location)
    with pytest.raises(SignInFailed) as e:
        yield service.finish_auth_code("gmail", flow, dict(params, state="forged"))
    assert "state mismatch" in str(e.value)
    with pytest.raises(SignInFailed) as e:
        yield service.finish_auth_code("gmail", flow, params)
    assert "already used" in str(e.value)
    assert sandbox.google.access_tokens == {}  # the code was never redeemed
    with pytest.raises(NeedsSignIn):
        yield service.sources["gmail"].access_token()


@pytest_twisted.inlineCallbacks
def test_wrong_google_account_declined_and_bad_code(sandbox: Sandbox, tmp_path: Path,
                                                    services: Make):
    service = services(config_for(tmp_path / "state", google_sign_in_account(sandbox, tmp_path)))
    sandbox.google.add_user("someone@example.org", "their password")
    with pytest.raises(SignInFailed) as wrong:
        yield google_sign_in(service, sandbox, as_user="someone@example.org",
                             password="their password")
    assert ("signed in as someone@example.org, but the account is configured for "
            "scanner@example.org") in str(wrong.value)

    _, flow = yield service.start_auth_code("gmail", REDIRECT_URI)
    with pytest.raises(SignInFailed) as declined:
        yield service.finish_auth_code("gmail", flow, {"error": "access_denied",
                                                       "state": flow["state"]})
    assert str(declined.value) == ("sign-in for account 'gmail' failed: Google did not "
                                   "sign in: access_denied")

    _, flow = yield service.start_auth_code("gmail", REDIRECT_URI)
    with pytest.raises(SignInFailed) as bad:
        yield service.finish_auth_code("gmail", flow, {"code": "4/0Anot-a-code",
                                                       "state": flow["state"]})
    assert str(bad.value).endswith("redeeming the code failed: invalid_grant: Bad Request")
    with pytest.raises(NeedsSignIn):
        yield service.sources["gmail"].access_token()


@pytest_twisted.inlineCallbacks
def test_sign_in_replaces_a_revoked_refresh_token_file_and_the_newest_wins(
        sandbox: Sandbox, tmp_path: Path, services: Make):
    account = google_sign_in_account(sandbox, tmp_path, flow="refresh_token")
    first = sandbox.google.mint_refresh_token(EMAIL, account.client_id)
    account = google_sign_in_account(
        sandbox, tmp_path, flow="refresh_token", client_id=account.client_id,
        client_secret_file=account.client_secret_file,
        refresh_token_file=secret_file(tmp_path, "rt.txt", first))
    service = services(config_for(tmp_path / "state", account))
    source = service.sources["gmail"]
    yield source.access_token()
    sandbox.google.revoke(first)
    source.token_rejected((yield source.access_token()))
    with pytest.raises(NeedsSignIn) as e:
        yield source.access_token()
    assert "use Sign in with Google on the admin page" in str(e.value)
    assert str(tmp_path / "rt.txt") in str(e.value)

    status = yield google_sign_in(service, sandbox)
    assert status.state == "ok"
    source.token_rejected((yield source.access_token()))
    token = yield source.access_token()  # refreshed with the signed-in token: the file's is revoked
    assert sandbox.google.check_access_token(token) is not None

    # the operator writes a newer token into the file: from now on that one is used
    (signed_in,) = [r.token for r in sandbox.google.refresh_tokens.values() if r.valid]
    newer = sandbox.google.mint_refresh_token(EMAIL, account.client_id)
    secret_file(tmp_path, "rt.txt", newer)
    sandbox.google.revoke(signed_in)
    source.token_rejected(token)
    token = yield source.access_token()
    assert sandbox.google.check_access_token(token) is not None


def test_device_code_is_not_for_google(sandbox: Sandbox, tmp_path: Path, services: Make):
    service = services(config_for(tmp_path / "state", google_sign_in_account(sandbox, tmp_path)),
                       start=False)
    failure: list[Any] = []
    service.start_device_code("gmail").addErrback(failure.append)
    assert failure and failure[0].check(SignInFailed)
    assert "Google accounts sign in in the browser only" in str(failure[0].value)
