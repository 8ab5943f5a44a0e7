"""
Fixtures for the sandbox's own tests: a started L{Sandbox} on loopback ports, and
blocking-client helpers that run in a thread so the reactor keeps serving.
"""

from __future__ import annotations

import base64
import smtplib
import ssl
from typing import TYPE_CHECKING, Iterator

import pytest
import pytest_twisted
from twisted.python.filepath import FilePath

from xrelay.sandbox import Sandbox

if TYPE_CHECKING:
    import requests


@pytest.fixture
def sandbox(tmp_path) -> Iterator[Sandbox]:
    sb = Sandbox(FilePath(str(tmp_path / "sandbox")))
    sb.start()
    yield sb
    pytest_twisted.blockon(sb.stop())


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def smtp_connect(sb: Sandbox, port: int | None = None) -> smtplib.SMTP:
    """An smtplib client after EHLO + verified STARTTLS + EHLO (blocking: call in a thread)."""
    client = smtplib.SMTP(sb.smtp_host, port or sb.smtp_port, timeout=10)
    client.ehlo("client.test")
    client.starttls(context=ssl.create_default_context(cafile=sb.ca_file))
    client.ehlo("client.test")
    return client


def app_token(sb: Sandbox, resource: str = "https://outlook.office365.com") -> str:
    """An app-only token for the default account, straight from the identity platform."""
    app = sb.default_app
    response = sb.identity.token(
        "sandbox.onmicrosoft.com",
        {"grant_type": "client_credentials", "client_id": app.client_id, "client_secret": app.client_secret or "",
         "scope": f"{resource}/.default"},
    )
    assert response.status == 200, response
    assert response.body is not None
    return str(response.body["access_token"])


def msal_http_client(sb: Sandbox) -> "requests.Session":
    """
    The requests session to give msal as C{http_client}.  msal's own C{verify=} is set
    on a Session, and requests lets C{REQUESTS_CA_BUNDLE}/C{CURL_CA_BUNDLE} from the
    environment override a Session's C{verify} (psf/requests#3829): with those set (as
    on many CI machines) the sandbox CA would be ignored.  C{trust_env=False} stops that.
    """
    import requests

    session = requests.Session()
    session.trust_env = False
    session.verify = sb.ca_file
    return session
