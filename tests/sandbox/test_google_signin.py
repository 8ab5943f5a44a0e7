"""
The sandbox's Google authorization endpoint and authorization code grant, driven over
real HTTPS with requests as a browser and a web-server app would: the sign-in page, the
redirect back with code and state, PKCE at the token endpoint, Google's error bodies, and
the resulting tokens accepted by the refresh grant and the Gmail-like SMTP server.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import pytest_twisted
import requests
from twisted.internet import threads

from xrelay.sandbox import Sandbox
from xrelay.sandbox.webtoken import unverified

from .conftest import smtp_connect, xoauth2

EMAIL = "scanner@example.org"
PASSWORD = "plain old password 7"
REDIRECT = "http://localhost:8025/signin/callback"
SCOPE = "https://mail.google.com/ openid email"


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(64)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _setup(sb: Sandbox) -> Any:
    client = sb.google.register_client(redirect_uris=[REDIRECT])
    sb.google.add_user(EMAIL, PASSWORD)
    return client


def _auth_url(sb: Sandbox, client: Any, challenge: str, **extra: str) -> str:
    params = dict(response_type="code", client_id=client.client_id, redirect_uri=REDIRECT, scope=SCOPE,
                  state="st-123", code_challenge=challenge, code_challenge_method="S256",
                  access_type="offline", prompt="consent", login_hint=EMAIL)
    params.update(extra)
    return f"{sb.google_authority}/o/oauth2/v2/auth?" + urlencode(params)


def _session(sb: Sandbox) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = sb.ca_file
    return session


def _submit(sb: Sandbox, page: str, url: str, login: str, password: str, action: str = "accept") -> requests.Response:
    fields = {html.unescape(k): html.unescape(v)
              for k, v in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page)}
    form_action = html.unescape(re.search(r'<form method="post" action="([^"]*)"', page)[1])
    fields.update(login=login, passwd=password, action=action)
    return _session(sb).post(urlparse(url)._replace(path=form_action, query="").geturl(), data=fields,
                             allow_redirects=False, timeout=10)


def _sign_in(sb: Sandbox, url: str) -> dict[str, str]:
    page = _session(sb).get(url, timeout=10)
    assert page.status_code == 200
    answer = _submit(sb, page.text, url, EMAIL, PASSWORD)
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


def _token(sb: Sandbox, form: dict[str, str]) -> requests.Response:
    return _session(sb).post(sb.google_token_url, data=form, timeout=10)


@pytest_twisted.inlineCallbacks
def test_sign_in_page_code_pkce_and_tokens_that_gmail_accepts(sandbox: Sandbox):
    client = _setup(sandbox)
    verifier, challenge = _pkce()
    url = _auth_url(sandbox, client, challenge)

    def browser_and_app() -> dict[str, Any]:
        page = _session(sandbox).get(url, timeout=10)
        wrong = _submit(sandbox, page.text, url, EMAIL, "not it")
        params = _sign_in(sandbox, url)
        form = dict(grant_type="authorization_code", code=params["code"], client_id=client.client_id,
                    client_secret=client.client_secret, redirect_uri=REDIRECT)
        missing = _token(sandbox, form)
        bad = _token(sandbox, dict(form, code_verifier=verifier + "x"))
        good = _token(sandbox, dict(form, code_verifier=verifier))
        again = _token(sandbox, dict(form, code_verifier=verifier))
        refreshed = _token(sandbox, dict(grant_type="refresh_token", client_id=client.client_id,
                                          client_secret=client.client_secret,
                                          refresh_token=good.json()["refresh_token"]))
        smtp = smtp_connect(sandbox, sandbox.gmail_smtp_port)
        auth = smtp.docmd("AUTH", "XOAUTH2 " + xoauth2(EMAIL, refreshed.json()["access_token"]))
        smtp.quit()
        return dict(page=page, wrong=wrong, params=params, missing=missing, bad=bad, good=good, again=again,
                    refreshed=refreshed, auth=auth)

    r = yield threads.deferToThread(browser_and_app)
    page = r["page"].text
    assert "<title>Sign in with Google</title>" in page
    for element in ('id="username"', 'id="password"', 'id="accept"', 'id="cancel"'):
        assert element in page
    assert f'value="{EMAIL}"' in page  # login_hint fills in the address
    assert r["wrong"].status_code == 200 and "Wrong password. Try again" in r["wrong"].text
    assert PASSWORD not in r["wrong"].text and "not it" not in r["wrong"].text
    params = r["params"]
    assert params["state"] == "st-123" and params["code"].startswith("4/0A")
    assert params["scope"] == SCOPE
    assert (r["missing"].status_code, r["missing"].json()) == (
        400, {"error": "invalid_grant", "error_description": "Missing code verifier."})
    assert (r["bad"].status_code, r["bad"].json()) == (
        400, {"error": "invalid_grant", "error_description": "Invalid code verifier."})
    body = r["good"].json()
    assert r["good"].status_code == 200
    assert set(body) == {"access_token", "expires_in", "refresh_token", "scope", "token_type", "id_token"}
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3599 and body["scope"] == SCOPE
    assert body["refresh_token"].startswith("1//0")
    _, claims = unverified(body["id_token"])
    assert claims["iss"] == "https://accounts.google.com" and claims["aud"] == client.client_id
    assert claims["email"] == EMAIL and claims["email_verified"] is True
    assert (r["again"].status_code, r["again"].json()) == (
        400, {"error": "invalid_grant", "error_description": "Bad Request"})  # one use
    assert r["refreshed"].status_code == 200
    assert r["auth"] == (235, b"2.7.0 Accepted")
    assert r["good"].headers["Cache-Control"] == "no-store, no-cache"


@pytest_twisted.inlineCallbacks
def test_refresh_token_only_offline_and_again_only_with_prompt_consent(sandbox: Sandbox):
    client = _setup(sandbox)

    def exchange(**extra: str) -> dict[str, Any]:
        verifier, challenge = _pkce()
        params = _sign_in(sandbox, _auth_url(sandbox, client, challenge, **extra))
        answer = _token(sandbox, dict(grant_type="authorization_code", code=params["code"],
                                      client_id=client.client_id, client_secret=client.client_secret,
                                      redirect_uri=REDIRECT, code_verifier=verifier))
        assert answer.status_code == 200
        return answer.json()

    def run() -> list[dict[str, Any]]:
        return [exchange(access_type="online"), exchange(), exchange(prompt=""), exchange(prompt="consent")]

    online, first, repeat, consent = yield threads.deferToThread(run)
    assert "refresh_token" not in online
    assert "refresh_token" in first
    assert "refresh_token" not in repeat  # Google sends it once per consent
    assert "refresh_token" in consent


@pytest_twisted.inlineCallbacks
def test_requests_google_will_not_redirect_show_an_error_page(sandbox: Sandbox):
    client = _setup(sandbox)
    _, challenge = _pkce()

    def run() -> list[requests.Response]:
        session = _session(sandbox)
        return [
            session.get(_auth_url(sandbox, client, challenge, redirect_uri="https://evil.example/cb"),
                        allow_redirects=False, timeout=10),
            session.get(_auth_url(sandbox, client, challenge, client_id="nobody.apps.googleusercontent.com"),
                        allow_redirects=False, timeout=10),
            session.get(_auth_url(sandbox, client, challenge, response_type="token"), allow_redirects=False,
                        timeout=10),
            session.get(_auth_url(sandbox, client, challenge, scope=""), allow_redirects=False, timeout=10),
        ]

    mismatch, unknown, token, no_scope = yield threads.deferToThread(run)
    assert mismatch.status_code == 400 and "Location" not in mismatch.headers
    assert "Error 400: redirect_uri_mismatch" in mismatch.text
    assert "redirect_uri=https://evil.example/cb" in mismatch.text
    assert unknown.status_code == 401 and "Error 401: invalid_client" in unknown.text
    assert token.status_code == 400 and "Error 400: unsupported_response_type" in token.text
    assert no_scope.status_code == 400 and "Missing required parameter: scope" in no_scope.text


@pytest_twisted.inlineCallbacks
def test_cancel_and_unknown_account(sandbox: Sandbox):
    client = _setup(sandbox)
    _, challenge = _pkce()
    url = _auth_url(sandbox, client, challenge)

    def run() -> tuple[requests.Response, requests.Response]:
        page = _session(sandbox).get(url, timeout=10).text
        return (_submit(sandbox, page, url, "", "", action="cancel"),
                _submit(sandbox, page, url, "nobody@example.org", PASSWORD))

    cancel, unknown = yield threads.deferToThread(run)
    assert cancel.status_code == 302
    assert cancel.headers["Location"] == REDIRECT + "?error=access_denied&state=st-123"
    assert unknown.status_code == 200 and "Couldn&#x27;t find your Google Account" in unknown.text


@pytest_twisted.inlineCallbacks
def test_code_redeemed_with_another_redirect_uri_or_client(sandbox: Sandbox):
    client = _setup(sandbox)
    other = sandbox.google.register_client(redirect_uris=[REDIRECT])
    verifier, challenge = _pkce()

    def run() -> list[requests.Response]:
        params = _sign_in(sandbox, _auth_url(sandbox, client, challenge))
        form = dict(grant_type="authorization_code", code=params["code"], client_id=client.client_id,
                    client_secret=client.client_secret, redirect_uri=REDIRECT, code_verifier=verifier)
        return [
            _token(sandbox, dict(form, redirect_uri="http://localhost:9999/cb")),
            _token(sandbox, dict(form, client_id=other.client_id, client_secret=other.client_secret)),
            _token(sandbox, dict(form, client_secret="GOCSPX-wrong")),
        ]

    redirect, foreign, secret = yield threads.deferToThread(run)
    assert (redirect.status_code, redirect.json()) == (
        400, {"error": "redirect_uri_mismatch", "error_description": "Bad Request"})
    assert (foreign.status_code, foreign.json()) == (
        400, {"error": "invalid_grant", "error_description": "Bad Request"})
    assert (secret.status_code, secret.json()) == (
        401, {"error": "invalid_client", "error_description": "Unauthorized"})
