"""Graph sendMail (MIME) over real HTTPS with tokens from the sandbox identity platform."""

from __future__ import annotations

import base64

import pytest_twisted
import requests
from twisted.internet import threads

from xrelay.sandbox import DEFAULT_MAILBOX, Sandbox

from .conftest import app_token

MIME = b"From: relay@sandbox.example\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nhello\r\n"


def _send(sb: Sandbox, token: str | None, mime: bytes = MIME, user: str = DEFAULT_MAILBOX) -> requests.Response:
    headers = {"Content-Type": "text/plain"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(f"{sb.graph_url}/users/{user}/sendMail", data=base64.b64encode(mime), headers=headers,
                         verify=sb.ca_file, timeout=10)


@pytest_twisted.inlineCallbacks
def test_send_mail_202_and_delivered(sandbox: Sandbox):
    response = yield threads.deferToThread(_send, sandbox, app_token(sandbox, "https://graph.microsoft.com"))
    assert response.status_code == 202 and response.content == b""
    [message] = sandbox.mailbox.messages
    assert (message.via, message.rcpt_to, message.data) == ("graph", ("bob@example.com",), MIME)


@pytest_twisted.inlineCallbacks
def test_send_mail_errors(sandbox: Sandbox):
    outlook = app_token(sandbox)
    graph = app_token(sandbox, "https://graph.microsoft.com")
    missing = yield threads.deferToThread(_send, sandbox, None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "InvalidAuthenticationToken"
    wrong_audience = yield threads.deferToThread(_send, sandbox, outlook)
    assert wrong_audience.status_code == 401
    assert wrong_audience.json()["error"]["message"] == "Access token validation failure. Invalid audience."
    sandbox.graph.throttle_next(1, retry_after=2)
    throttled = yield threads.deferToThread(_send, sandbox, graph)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "2"
    assert throttled.json()["error"]["code"] == "ApplicationThrottled"
    big = yield threads.deferToThread(_send, sandbox, graph, MIME + b"x" * (4 * 1024 * 1024))
    assert big.status_code == 413
    app = sandbox.identity.register_app("sandbox.onmicrosoft.com")
    token = sandbox.identity.token("sandbox.onmicrosoft.com", {"grant_type": "client_credentials", "client_id": app.client_id,
                                   "client_secret": app.client_secret, "scope": "https://graph.microsoft.com/.default"}).body["access_token"]
    denied = yield threads.deferToThread(_send, sandbox, token, MIME, "scanner@sandbox.example")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ErrorSendAsDenied"
    assert sandbox.mailbox.messages == []
