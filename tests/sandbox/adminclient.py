"""
A blocking client of the sandbox's app-management endpoints, as a setup wizard uses them:
msal for the admin's sign-in (device code, approved on the sandbox's own page as a person
would), requests for Graph and the Exchange admin API.  Call it in a thread
(C{threads.deferToThread}) so the reactor keeps serving the sandbox.
"""

from __future__ import annotations

import base64
import datetime
import re
import time
import uuid
from typing import Any, Callable

import attrs
import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from xrelay.sandbox import DEFAULT_TENANT, Sandbox
from xrelay.sandbox.entra import GRAPH_CLI_CLIENT_ID
from xrelay.sandbox.webtoken import b64url_encode

from .conftest import msal_http_client

GRAPH_ADMIN_SCOPES = ["Application.ReadWrite.All", "AppRoleAssignment.ReadWrite.All",
                      "DelegatedPermissionGrant.ReadWrite.All", "User.Read.All"]
EXCHANGE_ADMIN_SCOPES = ["https://outlook.office365.com/Exchange.Manage"]


def device_sign_in(sb: Sandbox, upn: str, scopes: list[str], decline: bool = False) -> dict[str, Any]:
    """msal's device code flow for the setup's public client, the code entered on the sandbox's page."""
    pca = msal.PublicClientApplication(GRAPH_CLI_CLIENT_ID, authority=f"{sb.authority}/{DEFAULT_TENANT}",
                                       instance_discovery=False, http_client=msal_http_client(sb))
    flow = pca.initiate_device_flow(scopes)
    assert "user_code" in flow, flow
    form = {"otc": flow["user_code"], "login": upn, "passwd": sb.password(upn), "action": "cancel" if decline else "accept"}
    page = requests.post(flow["verification_uri"], data=form, verify=sb.ca_file, timeout=10)
    assert page.status_code == 200
    flow["expires_at"] = time.time() + 60  # msal polls until then
    return pca.acquire_token_by_device_flow(flow)


@attrs.define
class AdminSession:
    """Graph and Exchange admin calls with one admin's bearer tokens."""

    sb: Sandbox
    graph_token: str
    exchange_token: str | None = None

    def graph(self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None,
              **params: str) -> requests.Response:
        return requests.request(method, f"{self.sb.graph_url}{path}", json=body, params=params or None,
                                headers={"Authorization": f"Bearer {token or self.graph_token}"},
                                verify=self.sb.ca_file, timeout=10)

    def exchange(self, cmdlet: str, **parameters: Any) -> requests.Response:
        tenant = self.sb.identity.tenant(DEFAULT_TENANT)
        assert tenant is not None
        return requests.post(f"{self.sb.authority}/adminapi/beta/{tenant.id}/InvokeCommand",
                             json={"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}},
                             headers={"Authorization": f"Bearer {self.exchange_token}"}, verify=self.sb.ca_file, timeout=10)

    def resource(self, app_id: str) -> dict[str, Any]:
        found = self.graph("GET", "/servicePrincipals", **{"$filter": f"appId eq '{app_id}'"})
        assert found.status_code == 200, found.text
        [sp] = found.json()["value"]
        return dict(sp)


def sign_in_as(sb: Sandbox, upn: str, exchange: bool = True) -> AdminSession:
    graph = device_sign_in(sb, upn, GRAPH_ADMIN_SCOPES)
    assert "access_token" in graph, graph
    session = AdminSession(sb, graph["access_token"])
    if exchange:
        # A second resource: a second token from the same sign-in in a real wizard;
        # here a second device code keeps the helper simple.
        exo = device_sign_in(sb, upn, EXCHANGE_ADMIN_SCOPES)
        assert "access_token" in exo, exo
        session.exchange_token = exo["access_token"]
    return session


@attrs.frozen
class HostCertificate:
    """A certificate made on the relay's host: the key never leaves it."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @classmethod
    def make(cls, name: str = "xrelay relay") -> "HostCertificate":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=365)).sign(key, hashes.SHA256()))
        return cls(key, cert)

    def key_credential(self) -> dict[str, Any]:
        """The C{keyCredential} JSON: the public certificate only, base64 DER."""
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {"type": "AsymmetricX509Cert", "usage": "Verify", "key": base64.b64encode(der).decode(),
                "displayName": "CN=xrelay relay"}

    def msal_credential(self) -> dict[str, str]:
        key_pem = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        return {"private_key": key_pem.decode(),
                "public_certificate": self.certificate.public_bytes(serialization.Encoding.PEM).decode()}

    def proof(self, application_object_id: str) -> str:
        """The addKey/removeKey proof-of-possession JWT, as Microsoft's docs describe it."""
        import json

        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT",
                  "x5t": b64url_encode(self.certificate.fingerprint(hashes.SHA1()))}
        claims = {"aud": "00000002-0000-0000-c000-000000000000", "iss": application_object_id,
                  "nbf": now, "exp": now + 600, "jti": str(uuid.uuid4())}
        signing_input = (b64url_encode(json.dumps(header).encode()) + "." + b64url_encode(json.dumps(claims).encode()))
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url_encode(signature)


def app_token(sb: Sandbox, client_id: str, credential: dict[str, str] | str, resource: str) -> dict[str, Any]:
    cca = msal.ConfidentialClientApplication(client_id, client_credential=credential,
                                             authority=f"{sb.authority}/{DEFAULT_TENANT}", instance_discovery=False,
                                             http_client=msal_http_client(sb))
    return dict(cca.acquire_token_for_client([f"{resource}/.default"]))


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "state") -> Any:
    """Poll C{check} until it returns something true (the wizard's own polling)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: last {result!r}")
        time.sleep(0.1)


def aadsts(result: dict[str, Any]) -> int | None:
    codes = result.get("error_codes") or []
    if codes:
        return int(codes[0])
    m = re.search(r"AADSTS(\d+)", str(result.get("error_description", "")))
    return int(m.group(1)) if m else None
