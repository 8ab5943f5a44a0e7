"""
The sandbox's app-management side driven over HTTPS exactly as a setup wizard drives it:
the admin signs in (msal, device code approved on the sandbox's page), creates the app
registration, its service principal, consent and a certificate through Graph, registers
the app in Exchange through the Exchange admin API, and the app then gets tokens and
sends mail; with every refusal on the way.
"""

from __future__ import annotations

import base64
import smtplib
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from xrelay.sandbox import DEFAULT_MAILBOX, Sandbox
from xrelay.sandbox.entra import EXCHANGE_APP_ID, GRAPH_APP_ID
from xrelay.sandbox.webtoken import unverified

from .adminclient import AdminSession, HostCertificate, aadsts, app_token, device_sign_in, sign_in_as, wait_for
from .conftest import smtp_connect, xoauth2

EXO = "https://outlook.office365.com"
GRAPH = "https://graph.microsoft.com"
DENIED = {"code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation."}


@pytest.fixture
def slow_tenant(sandbox: Sandbox) -> Sandbox:
    """Replication and Exchange take "forever" until the test makes time pass."""
    sandbox.entra.replication_delay = 3600
    sandbox.exchange_admin.acceptance_delay = 3600
    return sandbox


def _role_id(sp: dict[str, Any], value: str) -> str:
    return str(next(r["id"] for r in sp["appRoles"] if r["value"] == value))


def _create_app(admin: AdminSession, cert: HostCertificate | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    created = admin.graph("POST", "/applications", {"displayName": "xrelay relay.example", "tags": ["xrelay", "xrelay:relay.example"],
                                                    "signInAudience": "AzureADMyOrg"})
    assert created.status_code == 201, created.text
    app = created.json()
    if cert is not None:
        patched = admin.graph("PATCH", f"/applications/{app['id']}", {"keyCredentials": [cert.key_credential()]})
        assert patched.status_code == 204, patched.text
    sp = admin.graph("POST", "/servicePrincipals", {"appId": app["appId"], "tags": ["xrelay"]})
    assert sp.status_code == 201, sp.text
    return app, sp.json()


def _grant(admin: AdminSession, sp: dict[str, Any], resource_app_id: str, value: str) -> Any:
    resource = admin.resource(resource_app_id)
    return admin.graph("POST", f"/servicePrincipals/{sp['id']}/appRoleAssignments",
                       {"principalId": sp["id"], "resourceId": resource["id"], "appRoleId": _role_id(resource, value)})


def _smtp_auth(sb: Sandbox, user: str, token: str) -> tuple[int, bytes]:
    client = smtp_connect(sb)
    try:
        return client.docmd("AUTH", "XOAUTH2 " + xoauth2(user, token))
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            pass


def _smtp_send(sb: Sandbox, user: str, token: str) -> None:
    client = smtp_connect(sb)
    try:
        code, _ = client.docmd("AUTH", "XOAUTH2 " + xoauth2(user, token))
        assert code == 235
        client.sendmail(user, ["bob@example.com"], f"From: {user}\r\nTo: bob@example.com\r\nSubject: set up\r\n\r\nhello\r\n")
    finally:
        client.quit()


def _smtp_app_flow(sb: Sandbox) -> dict[str, Any]:
    admin = sign_in_as(sb, "admin@sandbox.example")
    found = admin.graph("GET", f"/users/{DEFAULT_MAILBOX}")
    assert found.status_code == 200 and found.json()["userPrincipalName"] == DEFAULT_MAILBOX
    cert = HostCertificate.make()
    app, sp = _create_app(admin, cert)
    again = admin.graph("GET", "/applications", **{"$filter": "tags/any(t:t eq 'xrelay:relay.example')"})
    assert [a["appId"] for a in again.json()["value"]] == [app["appId"]]
    assert again.json()["value"][0]["keyCredentials"][0]["type"] == "AsymmetricX509Cert"
    granted = _grant(admin, sp, EXCHANGE_APP_ID, "SMTP.SendAsApp")
    assert granted.status_code == 201, granted.text
    assert granted.json()["principalId"] == sp["id"]

    early = app_token(sb, app["appId"], cert.msal_credential(), EXO)
    assert aadsts(early) == 700016, early
    sb.entra.replicate()
    token = app_token(sb, app["appId"], cert.msal_credential(), EXO)
    assert "access_token" in token, token
    claims = unverified(token["access_token"])[1]
    assert claims["roles"] == ["SMTP.SendAsApp"] and claims["appidacr"] == "2"
    # Consent in Entra alone is not enough for SMTP: Exchange must know the app.
    assert _smtp_auth(sb, DEFAULT_MAILBOX, token["access_token"])[0] == 535

    registered = admin.exchange("New-ServicePrincipal", AppId=app["appId"], ObjectId=sp["id"], DisplayName="xrelay")
    assert registered.status_code == 200, registered.text
    assert registered.json()["value"][0]["AppId"] == app["appId"]
    permission = admin.exchange("Add-MailboxPermission", Identity=DEFAULT_MAILBOX, User=sp["id"], AccessRights="FullAccess")
    assert permission.status_code == 200, permission.text
    # Not yet effective: the wizard polls.
    refused = _smtp_auth(sb, DEFAULT_MAILBOX, token["access_token"])
    return {"token": token["access_token"], "refused": refused, "app": app}


@pytest_twisted.inlineCallbacks
def test_smtp_app_only_from_admin_sign_in_to_delivered_message(slow_tenant: Sandbox):
    sb = slow_tenant
    outcome = yield threads.deferToThread(_smtp_app_flow, sb)
    code, text = outcome["refused"]
    assert (code, text.split(b" [")[0]) == (535, b"5.7.3 Authentication unsuccessful")
    sb.exchange_admin.accept_now()
    yield threads.deferToThread(wait_for, lambda: sb.exchange_admin.accepts(outcome["app"]["appId"], DEFAULT_MAILBOX),
                                30, "Exchange to accept the app")
    yield threads.deferToThread(_smtp_send, sb, DEFAULT_MAILBOX, outcome["token"])
    [message] = sb.mailbox.messages
    assert message.rcpt_to == ("bob@example.com",)


def _graph_app_flow(sb: Sandbox) -> tuple[int, int]:
    admin = sign_in_as(sb, "admin@sandbox.example", exchange=False)
    app, sp = _create_app(admin)
    secret = admin.graph("POST", f"/applications/{app['id']}/addPassword", {"passwordCredential": {"displayName": "xrelay"}})
    assert secret.status_code == 200, secret.text
    assert secret.json()["hint"] == secret.json()["secretText"][:3]
    listed = admin.graph("GET", f"/applications/{app['id']}").json()["passwordCredentials"]
    assert listed[0]["secretText"] is None  # shown once only
    mime = base64.b64encode(f"From: {DEFAULT_MAILBOX}\r\nTo: bob@example.com\r\nSubject: g\r\n\r\nhi\r\n".encode()).decode()

    def send(token: str) -> int:
        import requests

        return requests.post(f"{sb.graph_url}/users/{DEFAULT_MAILBOX}/sendMail", data=mime,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
                             verify=sb.ca_file, timeout=10).status_code

    sb.entra.replicate()
    before = app_token(sb, app["appId"], secret.json()["secretText"], GRAPH)
    assert unverified(before["access_token"])[1]["roles"] == []
    without_consent = send(before["access_token"])
    assert _grant(admin, sp, GRAPH_APP_ID, "Mail.Send").status_code == 201
    after = app_token(sb, app["appId"], secret.json()["secretText"], GRAPH)
    return without_consent, send(after["access_token"])


@pytest_twisted.inlineCallbacks
def test_graph_app_only_needs_the_mail_send_consent(slow_tenant: Sandbox):
    refused, accepted = yield threads.deferToThread(_graph_app_flow, slow_tenant)
    assert (refused, accepted) == (403, 202)
    assert len(slow_tenant.mailbox.messages) == 1


def _replication(sb: Sandbox) -> tuple[dict[str, Any], dict[str, Any]]:
    admin = sign_in_as(sb, "admin@sandbox.example", exchange=False)
    cert = HostCertificate.make()
    app, sp = _create_app(admin, cert)
    _grant(admin, sp, GRAPH_APP_ID, "Mail.Send")
    first = app_token(sb, app["appId"], cert.msal_credential(), GRAPH)
    later = wait_for(lambda: (r := app_token(sb, app["appId"], cert.msal_credential(), GRAPH)).get("access_token") and r,
                     60, "the new app to replicate")
    return first, later


@pytest_twisted.inlineCallbacks
def test_a_new_app_is_unknown_until_it_replicates(sandbox: Sandbox):
    sandbox.entra.replication_delay = 2
    first, later = yield threads.deferToThread(_replication, sandbox)
    assert first["error"] == "unauthorized_client" and aadsts(first) == 700016
    assert "was not found in the directory" in first["error_description"]
    assert unverified(later["access_token"])[1]["roles"] == ["Mail.Send"]


def _no_service_principal(sb: Sandbox) -> dict[str, Any]:
    admin = sign_in_as(sb, "admin@sandbox.example", exchange=False)
    cert = HostCertificate.make()
    app = admin.graph("POST", "/applications", {"displayName": "half done"}).json()
    admin.graph("PATCH", f"/applications/{app['id']}", {"keyCredentials": [cert.key_credential()]})
    sb.entra.replicate()
    return app_token(sb, app["appId"], cert.msal_credential(), GRAPH)


@pytest_twisted.inlineCallbacks
def test_an_app_without_service_principal_gets_no_app_token(sandbox: Sandbox):
    result = yield threads.deferToThread(_no_service_principal, sandbox)
    assert result["error"] == "invalid_client" and aadsts(result) == 7000229


def _rotation(sb: Sandbox) -> dict[str, Any]:
    admin = sign_in_as(sb, "admin@sandbox.example", exchange=False)
    old, new = HostCertificate.make("old"), HostCertificate.make("new")
    app, sp = _create_app(admin, old)
    _grant(admin, sp, GRAPH_APP_ID, "Mail.Send")
    sb.entra.replicate()
    out: dict[str, Any] = {}
    out["forged"] = admin.graph("POST", f"/applications/{app['id']}/addKey",
                                {"keyCredential": new.key_credential(), "passwordCredential": None, "proof": new.proof(app["id"])})
    added = admin.graph("POST", f"/applications/{app['id']}/addKey",
                        {"keyCredential": new.key_credential(), "passwordCredential": None, "proof": old.proof(app["id"])})
    assert added.status_code == 200, added.text
    out["new_before_replication"] = app_token(sb, app["appId"], new.msal_credential(), GRAPH)
    out["old_meanwhile"] = app_token(sb, app["appId"], old.msal_credential(), GRAPH)
    sb.entra.replicate()
    out["new"] = app_token(sb, app["appId"], new.msal_credential(), GRAPH)
    old_key = next(k["keyId"] for k in admin.graph("GET", f"/applications/{app['id']}").json()["keyCredentials"]
                   if k["keyId"] != added.json()["keyId"])
    removed = admin.graph("POST", f"/applications/{app['id']}/removeKey", {"keyId": old_key, "proof": new.proof(app["id"])})
    assert removed.status_code == 204, removed.text
    out["old_after"] = app_token(sb, app["appId"], old.msal_credential(), GRAPH)
    out["keys"] = admin.graph("GET", f"/applications/{app['id']}").json()["keyCredentials"]
    return out


@pytest_twisted.inlineCallbacks
def test_certificate_rotation_with_add_key_and_remove_key(slow_tenant: Sandbox):
    out = yield threads.deferToThread(_rotation, slow_tenant)
    assert out["forged"].status_code == 403 and out["forged"].json()["error"]["code"] == "Authorization_RequestDenied"
    assert aadsts(out["new_before_replication"]) == 700027
    assert "access_token" in out["old_meanwhile"], "mail keeps flowing with the old key until the new one works"
    assert "access_token" in out["new"]
    assert aadsts(out["old_after"]) == 700027
    assert [k["displayName"] for k in out["keys"]] == ["CN=xrelay relay"] and len(out["keys"]) == 1


def _refusals(sb: Sandbox) -> dict[str, Any]:
    out: dict[str, Any] = {}
    user = sign_in_as(sb, "user@sandbox.example")
    out["user_create"] = user.graph("POST", "/applications", {"displayName": "x"})
    out["user_exchange"] = user.exchange("Get-ServicePrincipal")
    appadmin = sign_in_as(sb, "appadmin@sandbox.example")
    app, sp = _create_app(appadmin)
    out["appadmin_graph_role"] = _grant(appadmin, sp, GRAPH_APP_ID, "Mail.Send")
    out["appadmin_exchange_role"] = _grant(appadmin, sp, EXCHANGE_APP_ID, "SMTP.SendAsApp")
    out["appadmin_exchange"] = appadmin.exchange("New-ServicePrincipal", AppId=app["appId"], ObjectId=sp["id"])
    out["bad_token"] = appadmin.graph("GET", "/applications", token="not-a-token")
    out["no_mailbox"] = appadmin.graph("GET", "/users/nobody@sandbox.example")
    exchangeadmin = sign_in_as(sb, "exchangeadmin@sandbox.example")
    out["exchange_sp_wrong_object"] = exchangeadmin.exchange("New-ServicePrincipal", AppId=app["appId"], ObjectId=app["id"])
    out["exchange_ok"] = exchangeadmin.exchange("New-ServicePrincipal", AppId=app["appId"], ObjectId=sp["id"])
    out["exchange_no_mailbox"] = exchangeadmin.exchange("Add-MailboxPermission", Identity="nobody@sandbox.example",
                                                        User=app["appId"], AccessRights="FullAccess")
    out["declined"] = device_sign_in(sb, "admin@sandbox.example", ["Application.ReadWrite.All"], decline=True)
    return out


@pytest_twisted.inlineCallbacks
def test_refusals_as_microsoft_words_them(slow_tenant: Sandbox):
    out = yield threads.deferToThread(_refusals, slow_tenant)
    for name in ("user_create", "appadmin_graph_role"):
        response = out[name]
        assert response.status_code == 403, name
        assert {k: response.json()["error"][k] for k in ("code", "message")} == DENIED, name
        assert set(response.json()["error"]["innerError"]) == {"date", "request-id", "client-request-id"}
    assert out["appadmin_exchange_role"].status_code == 201
    for name, cmdlet in (("user_exchange", "Get-ServicePrincipal"), ("appadmin_exchange", "New-ServicePrincipal")):
        assert out[name].status_code == 401, name
        assert out[name].json()["error"]["code"] == "Unauthorized"
        assert out[name].json()["error"]["message"] == f"User is not allowed to call {cmdlet}"
    assert out["bad_token"].status_code == 401 and out["bad_token"].json()["error"]["code"] == "InvalidAuthenticationToken"
    assert out["no_mailbox"].status_code == 404
    assert out["no_mailbox"].json()["error"]["code"] == "Request_ResourceNotFound"
    assert "nobody@sandbox.example" in out["no_mailbox"].json()["error"]["message"]
    assert out["exchange_sp_wrong_object"].status_code == 400
    assert "enterprise application" in out["exchange_sp_wrong_object"].json()["error"]["message"]
    assert out["exchange_ok"].status_code == 200
    assert out["exchange_no_mailbox"].status_code == 400
    assert "ManagementObjectNotFoundException" in out["exchange_no_mailbox"].json()["error"]["message"]
    assert out["declined"]["error"] == "authorization_declined"


def test_exchange_lines_run_by_hand(sandbox: Sandbox):
    """An admin pastes the printed PowerShell lines: the same state as the admin API."""
    app = sandbox.entra.create_application("admin@sandbox.example", "by hand")
    sp = sandbox.entra.create_service_principal("admin@sandbox.example", app.app_id)
    out = sandbox.exchange_admin.run_powershell(
        "Connect-ExchangeOnline\n"
        f"New-ServicePrincipal -AppId {app.app_id} -ObjectId {sp.id} -DisplayName 'xrelay relay'\n"
        "New-ManagementScope -Name 'xrelay relay' -RecipientRestrictionFilter \"PrimarySmtpAddress -eq 'relay@sandbox.example'\"\n"
        f"New-ManagementRoleAssignment -Role 'Application SMTP.SendAsApp' -App {app.app_id} -CustomResourceScope 'xrelay relay'\n"
    )
    assert [o.get("AppId") or o.get("Role") or o.get("Name") for o in out] == [app.app_id, "xrelay relay", "Application SMTP.SendAsApp"]
    assert sandbox.exchange_admin.principals[app.app_id].display_name == "xrelay relay"


def _rbac_flow(sb: Sandbox) -> dict[str, Any]:
    """RBAC for Applications: no tenant-wide Entra permission, Exchange scopes the app to one mailbox."""
    admin = sign_in_as(sb, "admin@sandbox.example")
    cert = HostCertificate.make()
    app, sp = _create_app(admin, cert)
    sb.entra.replicate()
    out: dict[str, Any] = {}
    for resource in (EXO, GRAPH):
        token = app_token(sb, app["appId"], cert.msal_credential(), resource)
        assert unverified(token["access_token"])[1]["roles"] == [], "no Entra consent at all"
        out[resource] = token["access_token"]
    steps = [
        ("New-ServicePrincipal", {"AppId": app["appId"], "ObjectId": sp["id"], "DisplayName": "xrelay relay.example"}),
        ("New-ManagementScope", {"Name": "xrelay relay.example", "RecipientRestrictionFilter": f"PrimarySmtpAddress -eq '{DEFAULT_MAILBOX}'"}),
        ("New-ManagementRoleAssignment", {"Role": "Application SMTP.SendAsApp", "App": app["appId"], "CustomResourceScope": "xrelay relay.example"}),
        ("New-ManagementRoleAssignment", {"Role": "Application Mail.Send", "App": app["appId"], "CustomResourceScope": "xrelay relay.example"}),
    ]
    for cmdlet, parameters in steps:
        done = admin.exchange(cmdlet, **parameters)
        assert done.status_code == 200, (cmdlet, done.text)
    out["smtp_before"] = _smtp_auth(sb, DEFAULT_MAILBOX, out[EXO])[0]
    out["app"] = app
    return out


def _graph_send(sb: Sandbox, token: str, user: str) -> int:
    import requests

    mime = base64.b64encode(f"From: {user}\r\nTo: bob@example.com\r\nSubject: g\r\n\r\nhi\r\n".encode()).decode()
    return requests.post(f"{sb.graph_url}/users/{user}/sendMail", data=mime,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
                         verify=sb.ca_file, timeout=10).status_code


@pytest_twisted.inlineCallbacks
def test_rbac_for_applications_scopes_smtp_and_graph_to_the_relay_mailbox(slow_tenant: Sandbox):
    sb = slow_tenant
    other = "someone@sandbox.example"
    sb.identity.add_user("sandbox.onmicrosoft.com", other, "x" * 16)
    out = yield threads.deferToThread(_rbac_flow, sb)
    assert out["smtp_before"] == 535
    graph_before = yield threads.deferToThread(_graph_send, sb, out[GRAPH], DEFAULT_MAILBOX)
    assert graph_before == 403
    sb.exchange_admin.accept_now()
    yield threads.deferToThread(wait_for, lambda: sb.exchange_admin.accepts(out["app"]["appId"], DEFAULT_MAILBOX),
                                30, "Exchange to apply the role assignments")
    yield threads.deferToThread(_smtp_send, sb, DEFAULT_MAILBOX, out[EXO])
    sent = yield threads.deferToThread(_graph_send, sb, out[GRAPH], DEFAULT_MAILBOX)
    outside = yield threads.deferToThread(_graph_send, sb, out[GRAPH], other)
    smtp_outside = yield threads.deferToThread(_smtp_auth, sb, other, out[EXO])
    assert (sent, outside, smtp_outside[0]) == (202, 403, 535)
    assert len(sb.mailbox.messages) == 2


def _auth_code_any_port(sb: Sandbox, decline: bool) -> Any:
    """The wizard's browser sign-in: auth code + PKCE to http://localhost on the relay's own port."""
    import hashlib
    import secrets
    from urllib.parse import parse_qs, urlparse

    import requests

    from xrelay.sandbox.entra import GRAPH_CLI_CLIENT_ID
    from xrelay.sandbox.webtoken import b64url_encode

    verifier = secrets.token_urlsafe(48)
    # The Graph CLI tools register http://localhost: any port, but no other path
    # (https://learn.microsoft.com/en-us/entra/identity-platform/reply-url, localhost exceptions).
    redirect = "http://localhost:18025/"
    params = {"client_id": GRAPH_CLI_CLIENT_ID, "response_type": "code", "redirect_uri": redirect, "state": "s1",
              "scope": "Application.ReadWrite.All offline_access openid profile",
              "code_challenge": b64url_encode(hashlib.sha256(verifier.encode()).digest()), "code_challenge_method": "S256"}
    url = f"{sb.authority}/sandbox.onmicrosoft.com/oauth2/v2.0/authorize"
    page = requests.get(url, params=params, verify=sb.ca_file, timeout=10)
    assert page.status_code == 200, page.text
    for wrong_uri in ("http://evil.example:18025/", "http://localhost:18025/setup/callback"):
        wrong = requests.get(url, params={**params, "redirect_uri": wrong_uri}, verify=sb.ca_file, timeout=10)
        assert wrong.status_code == 400 and "AADSTS50011" in wrong.text, wrong_uri
    form = {**params, "login": "admin@sandbox.example", "passwd": sb.password("admin@sandbox.example"),
            "action": "cancel" if decline else "accept"}
    back = requests.post(url, data=form, verify=sb.ca_file, timeout=10, allow_redirects=False)
    assert back.status_code == 302
    location = urlparse(back.headers["location"])
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect and query["state"] == "s1"
    if decline:
        return query
    token = requests.post(f"{sb.authority}/sandbox.onmicrosoft.com/oauth2/v2.0/token", verify=sb.ca_file, timeout=10, data={
        "grant_type": "authorization_code", "client_id": GRAPH_CLI_CLIENT_ID, "code": query["code"],
        "redirect_uri": redirect, "code_verifier": verifier, "scope": params["scope"]})
    return token.json()


@pytest_twisted.inlineCallbacks
def test_browser_sign_in_for_the_setup_client_on_any_localhost_port(sandbox: Sandbox):
    token = yield threads.deferToThread(_auth_code_any_port, sandbox, False)
    assert "access_token" in token, token
    assert unverified(token["access_token"])[1]["scp"] == "Application.ReadWrite.All"
    declined = yield threads.deferToThread(_auth_code_any_port, sandbox, True)
    assert declined["error"] == "access_denied" and declined["error_description"].startswith("AADSTS65004")
