"""
The sandbox identity platform driven over real HTTPS by real msal (and by requests where
the test needs the raw Microsoft wire format).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlparse

import msal
import pytest_twisted
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import threads

from xrelay.sandbox import Sandbox
from xrelay.sandbox.webtoken import unverified

from .conftest import msal_http_client

TENANT = "contoso.onmicrosoft.com"
SMTP_SCOPE = ["https://outlook.office.com/SMTP.Send"]


def _aad_error_shape(body: dict[str, Any], error: str, code: int) -> None:
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert re.match(
        rf"^AADSTS{code}: .+\r\nTrace ID: [0-9a-f-]{{36}}\r\nCorrelation ID: [0-9a-f-]{{36}}\r\nTimestamp: \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\dZ$",
        body["error_description"],
        re.S,
    ), body["error_description"]
    assert set(body) == {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id", "error_uri"}
    assert body["error_uri"].endswith(f"/error?code={code}")


def _post(sb: Sandbox, path: str, data: dict[str, str], **kw: Any) -> requests.Response:
    return requests.post(f"{sb.authority}{path}", data=data, verify=sb.ca_file, allow_redirects=False, timeout=10, **kw)


@pytest_twisted.inlineCallbacks
def test_openid_configuration_points_back_at_the_sandbox(sandbox: Sandbox):
    tenant = sandbox.identity.add_tenant(TENANT)
    response = yield threads.deferToThread(
        requests.get, f"{sandbox.authority}/{TENANT}/v2.0/.well-known/openid-configuration", verify=sandbox.ca_file, timeout=10
    )
    config = response.json()
    assert config["token_endpoint"] == f"{sandbox.authority}/{tenant.id}/oauth2/v2.0/token"
    assert config["device_authorization_endpoint"] == f"{sandbox.authority}/{tenant.id}/oauth2/v2.0/devicecode"
    assert config["issuer"] == f"{sandbox.authority}/{tenant.id}/v2.0"
    common = yield threads.deferToThread(
        requests.get, f"{sandbox.authority}/common/v2.0/.well-known/openid-configuration", verify=sandbox.ca_file, timeout=10
    )
    assert common.json()["issuer"] == f"{sandbox.authority}/{{tenantid}}/v2.0"


@pytest_twisted.inlineCallbacks
def test_client_credentials_with_real_msal(sandbox: Sandbox):
    app = sandbox.default_app
    # msal discovers the authority in its constructor: blocking, so in a thread too.
    cca = yield threads.deferToThread(
        msal.ConfidentialClientApplication,
        app.client_id, client_credential=app.client_secret,
        authority=f"{sandbox.authority}/sandbox.onmicrosoft.com", instance_discovery=False, http_client=msal_http_client(sandbox),
    )
    result = yield threads.deferToThread(cca.acquire_token_for_client, ["https://outlook.office365.com/.default"])
    assert result["token_type"] == "Bearer"
    assert result["expires_in"] == 3599
    _, claims = unverified(result["access_token"])
    assert claims["aud"] == "https://outlook.office365.com"
    assert claims["roles"] == ["SMTP.SendAsApp"]
    assert claims["appid"] == app.client_id
    assert sandbox.identity.check_access_token(result["access_token"]) is not None
    assert [(r.grant_type, r.client_id, r.outcome) for r in sandbox.identity.requests] == [
        ("client_credentials", app.client_id, "ok")
    ]


@pytest_twisted.inlineCallbacks
def test_wrong_client_secret_is_invalid_client_7000215(sandbox: Sandbox):
    app = sandbox.default_app
    response = yield threads.deferToThread(
        _post, sandbox, "/sandbox.onmicrosoft.com/oauth2/v2.0/token",
        {"grant_type": "client_credentials", "client_id": app.client_id, "client_secret": "nope",
         "scope": "https://outlook.office365.com/.default"},
        headers={"client-request-id": "11111111-2222-3333-4444-555555555555"},
    )
    assert response.status_code == 401
    body = response.json()
    _aad_error_shape(body, "invalid_client", 7000215)
    assert body["correlation_id"] == "11111111-2222-3333-4444-555555555555"
    assert "nope" not in response.text


@pytest_twisted.inlineCallbacks
def test_client_credentials_errors(sandbox: Sandbox):
    app = sandbox.default_app
    base = {"grant_type": "client_credentials", "client_id": app.client_id, "client_secret": app.client_secret or ""}
    scope = yield threads.deferToThread(_post, sandbox, "/sandbox.onmicrosoft.com/oauth2/v2.0/token",
                                        {**base, "scope": "https://outlook.office.com/SMTP.Send"})
    assert scope.status_code == 400
    _aad_error_shape(scope.json(), "invalid_scope", 1002012)
    unknown = yield threads.deferToThread(_post, sandbox, "/sandbox.onmicrosoft.com/oauth2/v2.0/token",
                                          {**base, "client_id": "00000000-0000-0000-0000-000000000000",
                                           "scope": "https://outlook.office365.com/.default"})
    assert unknown.status_code == 400
    _aad_error_shape(unknown.json(), "unauthorized_client", 700016)
    missing = yield threads.deferToThread(_post, sandbox, "/sandbox.onmicrosoft.com/oauth2/v2.0/token",
                                          {"grant_type": "client_credentials", "client_id": app.client_id,
                                           "scope": "https://outlook.office365.com/.default"})
    assert missing.status_code == 401
    _aad_error_shape(missing.json(), "invalid_client", 7000218)


@pytest_twisted.inlineCallbacks
def test_client_credentials_with_certificate_through_msal(sandbox: Sandbox):
    import datetime

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "xrelay app")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    app = sandbox.identity.register_app(TENANT, certificate_pem=cert_pem)
    cca = yield threads.deferToThread(
        msal.ConfidentialClientApplication,
        app.client_id, client_credential={"private_key": key_pem.decode(), "public_certificate": cert_pem.decode()},
        authority=f"{sandbox.authority}/{TENANT}", instance_discovery=False, http_client=msal_http_client(sandbox),
    )
    result = yield threads.deferToThread(cca.acquire_token_for_client, ["https://graph.microsoft.com/.default"])
    assert "access_token" in result, result
    assert unverified(result["access_token"])[1]["roles"] == ["Mail.Send"]

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    forged = yield threads.deferToThread(
        msal.ConfidentialClientApplication,
        app.client_id, client_credential={"private_key": other_pem.decode(), "public_certificate": cert_pem.decode()},
        authority=f"{sandbox.authority}/{TENANT}", instance_discovery=False, http_client=msal_http_client(sandbox),
    )
    refused = yield threads.deferToThread(forged.acquire_token_for_client, ["https://graph.microsoft.com/.default"])
    assert refused["error"] == "invalid_client"
    assert refused["error_codes"] == [700027]


@pytest_twisted.inlineCallbacks
def test_device_code_pending_then_approved_with_msal(sandbox: Sandbox):
    app = sandbox.identity.register_app(TENANT, public_client=True)
    sandbox.identity.add_user(TENANT, "alice@contoso.com", "correct horse")
    pca = yield threads.deferToThread(
        msal.PublicClientApplication,
        app.client_id, authority=f"{sandbox.authority}/{TENANT}", instance_discovery=False, http_client=msal_http_client(sandbox)
    )
    flow = yield threads.deferToThread(pca.initiate_device_flow, SMTP_SCOPE)
    assert flow["verification_uri"] == f"{sandbox.authority}/devicelogin"
    assert flow["expires_in"] == 900 and flow["interval"] == 5
    assert flow["message"] == (
        f"To sign in, use a web browser to open the page {sandbox.authority}/devicelogin "
        f"and enter the code {flow['user_code']} to authenticate."
    )
    pending = yield threads.deferToThread(
        _post, sandbox, f"/{TENANT}/oauth2/v2.0/token",
        {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "client_id": app.client_id,
         "device_code": flow["device_code"]},
    )
    assert pending.status_code == 400
    _aad_error_shape(pending.json(), "authorization_pending", 70016)

    sandbox.identity.approve_device_code(flow["user_code"], "alice@contoso.com")
    flow["expires_at"] = 0  # msal polls until this; the first poll now succeeds
    flow["interval"] = 0
    result = yield threads.deferToThread(pca.acquire_token_by_device_flow, flow, exit_condition=lambda f: False)
    assert result["token_type"] == "Bearer", result
    assert result["scope"] == "https://outlook.office.com/SMTP.Send"
    assert result["id_token_claims"]["preferred_username"] == "alice@contoso.com"
    assert "refresh_token" in result
    accounts = pca.get_accounts()
    assert [a["username"] for a in accounts] == ["alice@contoso.com"]
    access = sandbox.identity.check_access_token(result["access_token"])
    assert access is not None and access.upn == "alice@contoso.com" and access.permissions == {"SMTP.Send"}


@pytest_twisted.inlineCallbacks
def test_device_code_approved_on_the_device_login_page(sandbox: Sandbox):
    app = sandbox.identity.register_app(TENANT, public_client=True)
    sandbox.identity.add_user(TENANT, "alice@contoso.com", "correct horse")
    start = yield threads.deferToThread(
        _post, sandbox, f"/{TENANT}/oauth2/v2.0/devicecode", {"client_id": app.client_id, "scope": " ".join(SMTP_SCOPE + ["offline_access"])}
    )
    flow = start.json()
    page = yield threads.deferToThread(requests.get, flow["verification_uri"], verify=sandbox.ca_file, timeout=10)
    assert 'id="user_code"' in page.text and 'id="accept"' in page.text
    wrong = yield threads.deferToThread(
        _post, sandbox, "/devicelogin", {"otc": flow["user_code"], "login": "alice@contoso.com", "passwd": "wrong"}
    )
    assert "Your account or password is incorrect." in wrong.text
    done = yield threads.deferToThread(
        _post, sandbox, "/devicelogin", {"otc": flow["user_code"], "login": "alice@contoso.com", "passwd": "correct horse"}
    )
    assert 'id="done"' in done.text
    token = yield threads.deferToThread(
        _post, sandbox, f"/{TENANT}/oauth2/v2.0/token",
        {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "client_id": app.client_id, "device_code": flow["device_code"]},
    )
    assert token.status_code == 200
    assert set(token.json()) >= {"token_type", "scope", "expires_in", "ext_expires_in", "access_token", "refresh_token"}


@pytest_twisted.inlineCallbacks
def test_device_code_expires(sandbox: Sandbox):
    app = sandbox.identity.register_app(TENANT, public_client=True)
    start = yield threads.deferToThread(
        _post, sandbox, f"/{TENANT}/oauth2/v2.0/devicecode", {"client_id": app.client_id, "scope": SMTP_SCOPE[0]}
    )
    sandbox.identity.expire_device_codes()
    expired = yield threads.deferToThread(
        _post, sandbox, f"/{TENANT}/oauth2/v2.0/token",
        {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "client_id": app.client_id, "device_code": start.json()["device_code"]},
    )
    assert expired.status_code == 400
    _aad_error_shape(expired.json(), "expired_token", 70020)


def _sign_in_flow(sb: Sandbox, app_id: str, secret: str, password: str) -> tuple[dict[str, Any], requests.Response, msal.ConfidentialClientApplication]:
    cca = msal.ConfidentialClientApplication(
        app_id, client_credential=secret, authority=f"{sb.authority}/{TENANT}", instance_discovery=False, http_client=msal_http_client(sb)
    )
    flow = cca.initiate_auth_code_flow(SMTP_SCOPE, redirect_uri="http://localhost:8025/signin/callback")
    page = requests.get(flow["auth_uri"], verify=sb.ca_file, timeout=10)
    assert page.status_code == 200
    for element in ('id="username"', 'id="password"', 'id="accept"'):
        assert element in page.text
    hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
    import html

    hidden = {k: html.unescape(v) for k, v in hidden.items()}
    action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    posted = requests.post(
        f"{sb.authority}{action}", data={**hidden, "login": "alice@contoso.com", "passwd": password, "action": "accept"},
        verify=sb.ca_file, allow_redirects=False, timeout=10,
    )
    return flow, posted, cca


@pytest_twisted.inlineCallbacks
def test_auth_code_with_pkce_through_msal_and_the_sign_in_form(sandbox: Sandbox):
    app = sandbox.identity.register_app(TENANT, redirect_uris=["http://localhost:8025/signin/callback"])
    sandbox.identity.add_user(TENANT, "alice@contoso.com", "correct horse")
    flow, wrong, _ = yield threads.deferToThread(_sign_in_flow, sandbox, app.client_id, app.client_secret, "bad")
    assert wrong.status_code == 200 and "Your account or password is incorrect." in wrong.text
    flow, posted, cca = yield threads.deferToThread(_sign_in_flow, sandbox, app.client_id, app.client_secret, "correct horse")
    assert posted.status_code == 302
    location = urlparse(posted.headers["location"])
    assert location.netloc == "localhost:8025" and location.path == "/signin/callback"
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["state"] == flow["state"]
    result = yield threads.deferToThread(cca.acquire_token_by_auth_code_flow, flow, query)
    assert result.get("access_token"), result
    # msal sends the SHA-256 of its nonce in the request, and so it comes back.
    assert result["id_token_claims"]["nonce"] == hashlib.sha256(flow["nonce"].encode()).hexdigest()
    # One-time codes: redeeming again is invalid_grant 54005.
    again = yield threads.deferToThread(
        _post, sandbox, f"/{TENANT}/oauth2/v2.0/token",
        {"grant_type": "authorization_code", "client_id": app.client_id, "client_secret": app.client_secret or "",
         "code": query["code"], "redirect_uri": "http://localhost:8025/signin/callback", "code_verifier": flow["code_verifier"]},
    )
    _aad_error_shape(again.json(), "invalid_grant", 54005)


@pytest_twisted.inlineCallbacks
def test_auth_code_with_wrong_pkce_verifier_is_refused(sandbox: Sandbox):
    app = sandbox.identity.register_app(TENANT, redirect_uris=["http://localhost:8025/signin/callback"])
    sandbox.identity.add_user(TENANT, "alice@contoso.com", "correct horse")
    flow, posted, _ = yield threads.deferToThread(_sign_in_flow, sandbox, app.client_id, app.client_secret, "correct horse")
    code = parse_qs(urlparse(posted.headers["location"]).query)["code"][0]
    refused = yield threads.deferToThread(
        _post, sandbox, f"/{TENANT}/oauth2/v2.0/token",
        {"grant_type": "authorization_code", "client_id": app.client_id, "client_secret": app.client_secret or "",
         "code": code, "redirect_uri": "http://localhost:8025/signin/callback", "code_verifier": "x" * 43},
    )
    assert refused.status_code == 400
    _aad_error_shape(refused.json(), "invalid_grant", 501481)


@pytest_twisted.inlineCallbacks
def test_authorize_with_unregistered_redirect_shows_aadsts50011(sandbox: Sandbox):
    app = sandbox.identity.register_app(TENANT, redirect_uris=["http://localhost/ok"])
    response = yield (threads.deferToThread(
        requests.get, f"{sandbox.authority}/{TENANT}/oauth2/v2.0/authorize",
        params={"client_id": app.client_id, "response_type": "code", "redirect_uri": "http://evil.example/<x>"},
        verify=sandbox.ca_file, timeout=10,
    ))
    assert response.status_code == 400
    assert "AADSTS50011" in response.text
    assert "<x>" not in response.text and "&lt;x&gt;" in response.text


def _delegated_tokens(sb: Sandbox) -> tuple[Any, dict[str, Any]]:
    app = sb.identity.register_app(TENANT, public_client=True)
    sb.identity.add_user(TENANT, "alice@contoso.com", "correct horse")
    flow = sb.identity.device_authorization(TENANT, {"client_id": app.client_id, "scope": "https://outlook.office.com/SMTP.Send offline_access openid"}).body
    assert flow is not None
    sb.identity.approve_device_code(flow["user_code"], "alice@contoso.com")
    first = sb.identity.token(TENANT, {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "client_id": app.client_id,
                                       "device_code": flow["device_code"], "client_info": "1"})
    assert first.status == 200 and first.body is not None
    client_info = json.loads(base64.urlsafe_b64decode(first.body["client_info"] + "=="))
    assert client_info == {"uid": sb.identity.user("alice@contoso.com").oid, "utid": sb.identity.tenant(TENANT).id}  # type: ignore[union-attr]
    return app, first.body


@pytest_twisted.inlineCallbacks
def test_refresh_tokens_rotate_and_revocation_gives_invalid_grant(sandbox: Sandbox):
    app, first = _delegated_tokens(sandbox)
    form = {"grant_type": "refresh_token", "client_id": app.client_id, "scope": SMTP_SCOPE[0] + " offline_access"}
    second = yield threads.deferToThread(_post, sandbox, f"/{TENANT}/oauth2/v2.0/token", {**form, "refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    assert second.json()["refresh_token"] != first["refresh_token"]
    reused = yield threads.deferToThread(_post, sandbox, f"/{TENANT}/oauth2/v2.0/token", {**form, "refresh_token": first["refresh_token"]})
    _aad_error_shape(reused.json(), "invalid_grant", 70008)
    sandbox.identity.revoke("alice@contoso.com")
    revoked = yield threads.deferToThread(_post, sandbox, f"/{TENANT}/oauth2/v2.0/token", {**form, "refresh_token": second.json()["refresh_token"]})
    assert revoked.status_code == 400
    _aad_error_shape(revoked.json(), "invalid_grant", 50173)


@pytest_twisted.inlineCallbacks
def test_outage_switch_fails_the_token_endpoint_then_recovers(sandbox: Sandbox):
    sandbox.identity.fail_next(2, status=503)
    app = sandbox.default_app
    form = {"grant_type": "client_credentials", "client_id": app.client_id, "client_secret": app.client_secret or "",
            "scope": "https://outlook.office365.com/.default"}
    for _ in range(2):
        down = yield threads.deferToThread(_post, sandbox, "/sandbox.onmicrosoft.com/oauth2/v2.0/token", form)
        assert down.status_code == 503
        _aad_error_shape(down.json(), "temporarily_unavailable", 90033)
    up = yield threads.deferToThread(_post, sandbox, "/sandbox.onmicrosoft.com/oauth2/v2.0/token", form)
    assert up.status_code == 200


@pytest_twisted.inlineCallbacks
def test_google_refresh_token_grant(sandbox: Sandbox):
    account = sandbox.add_google_account("printer@gmail.example")
    form = {"grant_type": "refresh_token", "client_id": account["client_id"], "client_secret": account["client_secret"],
            "refresh_token": account["refresh_token"]}
    ok = yield threads.deferToThread(requests.post, account["token_url"], data=form, verify=sandbox.ca_file, timeout=10)
    body = ok.json()
    assert set(body) == {"access_token", "expires_in", "scope", "token_type"}
    assert body["access_token"].startswith("ya29.") and body["scope"] == "https://mail.google.com/"
    sandbox.identity.google.revoke("printer@gmail.example")
    revoked = yield threads.deferToThread(requests.post, account["token_url"], data=form, verify=sandbox.ca_file, timeout=10)
    assert revoked.status_code == 400
    assert revoked.json() == {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}


def test_issued_secrets_cover_tokens_and_client_secrets(sandbox: Sandbox):
    app, body = _delegated_tokens(sandbox)
    secrets = sandbox.issued_secrets()
    assert {body["access_token"], body["refresh_token"], body["id_token"], sandbox.default_app.client_secret} <= secrets
    assert sandbox.identity.requests[-1].grant_type == "urn:ietf:params:oauth:grant-type:device_code"
    assert not any(s in repr(sandbox.identity.requests) for s in secrets)


@pytest_twisted.inlineCallbacks
def test_expired_client_secret_is_invalid_client_7000222(sandbox: Sandbox):
    app = sandbox.identity.register_app(TENANT)
    secret = app.client_secret
    sandbox.identity.expire_client_secret(app.client_id)
    response = yield threads.deferToThread(
        _post, sandbox, f"/{TENANT}/oauth2/v2.0/token",
        {"grant_type": "client_credentials", "client_id": app.client_id, "client_secret": secret,
         "scope": "https://outlook.office365.com/.default"},
    )
    assert response.status_code == 401
    body = response.json()
    _aad_error_shape(body, "invalid_client", 7000222)
    assert body["error_description"].startswith(
        f"AADSTS7000222: The provided client secret keys for app '{app.client_id}' are expired. "
        "Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret")
    assert secret not in response.text
    assert secret in sandbox.issued_secrets()
