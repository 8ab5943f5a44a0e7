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


def _call(sb: Sandbox, token: str, method: str, path: str, **kw: object) -> requests.Response:
    return requests.request(method, f"{sb.graph_url}/users/{DEFAULT_MAILBOX}{path}",
                            headers={"Authorization": f"Bearer {token}",
                                     **kw.pop("headers", {})},  # type: ignore[dict-item]
                            verify=sb.ca_file, timeout=30, **kw)  # type: ignore[arg-type]


def _draft_and_upload(sb: Sandbox, token: str) -> dict[str, object]:
    """A draft, an upload session, ranges out of order and too large, then in order."""
    out: dict[str, object] = {}
    draft = _call(sb, token, "POST", "/messages", data=base64.b64encode(MIME),
                  headers={"Content-Type": "text/plain"})
    out["draft"] = draft.status_code
    draft_id = draft.json()["id"]
    session = _call(sb, token, "POST", f"/messages/{draft_id}/attachments/createUploadSession",
                    json={"AttachmentItem": {"attachmentType": "file", "name": "scan.pdf",
                                             "size": 5 * 1024 * 1024}})
    out["session"] = session.status_code, sorted(session.json())
    url = session.json()["uploadUrl"]
    out["ranges"] = session.json()["nextExpectedRanges"]
    total = 5 * 1024 * 1024
    data = bytes(range(256)) * (total // 256)

    def put(start: int, end: int, with_token: bool = True) -> requests.Response:
        return requests.put(url if with_token else url.split("?")[0], data=data[start:end + 1],
                            headers={"Content-Type": "application/octet-stream",
                                     "Content-Range": f"bytes {start}-{end}/{total}"},
                            verify=sb.ca_file, timeout=30)

    out["no_token"] = put(0, 9, with_token=False).status_code
    out["too_big"] = put(0, 4 * 1024 * 1024).status_code  # 4 MB + 1 byte
    out["out_of_order"] = put(100, 199).status_code
    first = put(0, 3 * 1024 * 1024 - 1)
    out["first"] = first.status_code, first.json()["nextExpectedRanges"]
    last = put(3 * 1024 * 1024, total - 1)
    out["last"] = last.status_code, "Location" in last.headers
    out["send"] = _call(sb, token, "POST", f"/messages/{draft_id}/send").status_code
    out["data"] = data
    return out


@pytest_twisted.inlineCallbacks
def test_draft_upload_session_ranges_and_send(sandbox: Sandbox):
    graph = app_token(sandbox, "https://graph.microsoft.com")
    no_readwrite = yield threads.deferToThread(
        _call, sandbox, graph, "POST", "/messages", data=base64.b64encode(MIME),
        headers={"Content-Type": "text/plain"})
    assert no_readwrite.status_code == 403  # drafts need Mail.ReadWrite
    sandbox.default_app.roles["https://graph.microsoft.com"] = ("Mail.Send", "Mail.ReadWrite")
    graph = app_token(sandbox, "https://graph.microsoft.com")
    out = yield threads.deferToThread(_draft_and_upload, sandbox, graph)
    assert out["draft"] == 201
    assert out["session"] == (201, ["@odata.context", "expirationDateTime", "nextExpectedRanges",
                                    "uploadUrl"])
    assert out["ranges"] == ["0-"]
    assert out["no_token"] == 401 and out["too_big"] == 413 and out["out_of_order"] == 416
    assert out["first"] == (200, [str(3 * 1024 * 1024)])
    assert out["last"] == (201, True)
    assert out["send"] == 202
    [message] = sandbox.mailbox.messages
    import email

    parsed = email.message_from_bytes(message.data)
    [pdf] = [p for p in parsed.walk() if p.get_filename() == "scan.pdf"]
    assert pdf.get_payload(decode=True) == out["data"]


@pytest_twisted.inlineCallbacks
def test_mailbox_failures_as_graph_answers_them(sandbox: Sandbox):
    graph = app_token(sandbox, "https://graph.microsoft.com")
    for kind, status in (("MailboxNotEnabledForRESTAPI", 404), ("ErrorInvalidUser", 404),
                         ("ErrorQuotaExceeded", 403)):
        sandbox.graph.fail_mailbox(DEFAULT_MAILBOX, kind)
        response = yield threads.deferToThread(_send, sandbox, graph)
        assert response.status_code == status and response.json()["error"]["code"] == kind
    sandbox.graph.fail_mailbox(DEFAULT_MAILBOX, None)
    response = yield threads.deferToThread(_send, sandbox, graph)
    assert response.status_code == 202
