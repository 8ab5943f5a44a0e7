"""
No token or secret the sandbox issued may be found in plaintext anywhere under state_dir
or in anything logged (Twisted's log, the standard library's, msal's) while the token
service goes through every flow: client credentials, device code, browser sign-in,
refresh with rotation, revocation, a platform outage, a Google account with a refresh
token file and one signed in with Google in the browser (plus a refused Google return).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlparse

import pytest
import pytest_twisted
from twisted.internet import threads

from xrelay.sandbox import Sandbox
from xrelay.tokens import (NeedsSignIn, SignInFailed, TokenService, TokenUnavailable,
                           stored_status)
from xrelay.tokens.cache import KEY_ENVIRONMENT_VARIABLE

from .conftest import (PASSWORD, REDIRECT_URI, USER, CapturedLogs, app_only_account,
                       config_for, delegated_account, secret_file)
from .test_google import google_account
from .test_google_signin import google_sign_in, google_sign_in_account
from .test_microsoft import browser_sign_in, sign_in_with_device_code

Make = Callable[..., TokenService]


@pytest_twisted.inlineCallbacks
def test_no_secret_in_state_dir_or_logs(sandbox: Sandbox, tmp_path: Path, services: Make,
                                        logs: CapturedLogs,
                                        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(KEY_ENVIRONMENT_VARIABLE, raising=False)
    sandbox.identity.device_code_interval = 1
    state = tmp_path / "state"
    device = delegated_account(sandbox, tmp_path, name="device")
    browser = delegated_account(sandbox, tmp_path, flow="auth_code", name="browser")
    gmail, _ = google_account(sandbox, tmp_path)
    wrong = app_only_account(sandbox, name="wrong",
                             client_secret_file=secret_file(tmp_path, "w.txt", "nope"))
    google_browser = google_sign_in_account(sandbox, tmp_path, name="google-browser")
    config = config_for(state, app_only_account(sandbox), device, browser, gmail, wrong,
                        google_browser)
    service = services(config)
    app_token = yield service.sources["main"].access_token()
    yield sign_in_with_device_code(service, sandbox, "device")
    auth_url, flow = yield service.start_auth_code("browser", REDIRECT_URI)
    location = yield threads.deferToThread(browser_sign_in, auth_url, sandbox.ca_file,
                                           USER, PASSWORD)
    yield service.finish_auth_code(
        "browser", flow, {k: v[0] for k, v in parse_qs(urlparse(location).query).items()})
    yield google_sign_in(service, sandbox, "google-browser")
    _, spent = yield service.start_auth_code("google-browser", REDIRECT_URI)
    with pytest.raises(SignInFailed):  # a code Google refuses: its reason, not the code
        yield service.finish_auth_code("google-browser", spent,
                                       {"code": "4/0Aleaked-" + "x" * 40,
                                        "state": spent["state"]})
    for name in ("main", "device", "browser", "google-browser"):  # refresh once
        token = yield service.sources[name].access_token()
        service.sources[name].token_rejected(token)
        yield service.sources[name].access_token()
    yield service.sources["gmail"].access_token()
    with pytest.raises(NeedsSignIn):
        yield service.sources["wrong"].access_token()
    sandbox.identity.revoke(USER)
    service.sources["main"].token_rejected(app_token)  # harmless for app-only
    token = yield service.sources["browser"].access_token()
    service.sources["browser"].token_rejected(token)
    with pytest.raises(NeedsSignIn):
        yield service.sources["browser"].access_token()
    sandbox.identity.unavailable_status = 500
    service.sources["main"].token_rejected((yield service.sources["main"].access_token()))
    with pytest.raises(TokenUnavailable):
        yield service.sources["main"].access_token()
    statuses = stored_status(config)
    yield service.stopService()

    secrets = sandbox.issued_secrets()
    assert len(secrets) > 15  # the flows above really issued tokens, codes and secrets
    key = (state / "keys" / "cache.key").read_bytes().strip().decode()
    files = {}
    for root, _, names in os.walk(state):
        for name in names:
            path = os.path.join(root, name)
            files[path] = open(path, "rb").read()
            if "tokens" in path or "keys" in path:
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert any(p.endswith("browser.cache") for p in files)
    assert any(p.endswith("google-browser.cache") for p in files)
    assert sandbox.google.auth_codes and sandbox.google.users  # Google's secrets are checked
    logged = logs.text() + "\n" + repr(statuses) + repr(service.status())
    assert "needs sign-in" in logged  # the capture works: the service did log
    for secret in secrets:
        for path, content in files.items():
            assert secret.encode() not in content, f"a sandbox secret is in {path}"
        assert secret not in logged, "a sandbox secret was logged"
    assert key not in logged
    assert "4/0Aleaked" not in logged and spent["code_verifier"] not in logged
