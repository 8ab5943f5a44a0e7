"""
Google accounts: the refresh token grant with treq against the sandbox's Google token
endpoint, over HTTPS trusting the public roots plus ca_file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import pytest_twisted

from xrelay.addresses import SenderPattern
from xrelay.config import AccountConfig
from xrelay.sandbox import Sandbox
from xrelay.tokens import NeedsSignIn, TokenService, TokenUnavailable
from xrelay.tokens.cache import KEY_ENVIRONMENT_VARIABLE

from .conftest import config_for, secret_file

Make = Callable[..., TokenService]
EMAIL = "scanner@example.org"


@pytest.fixture(autouse=True)
def _own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENVIRONMENT_VARIABLE, raising=False)


def google_account(sb: Sandbox, directory: Path, ca_file: str | None = "sandbox"
                   ) -> tuple[AccountConfig, dict[str, str]]:
    keys = sb.add_google_account(EMAIL)
    return AccountConfig(
        name="gmail", provider="google", user=EMAIL, flow="refresh_token",
        senders=(SenderPattern.parse(EMAIL),), client_id=keys["client_id"],
        client_secret_file=secret_file(directory, "google-secret.txt", keys["client_secret"]),
        refresh_token_file=secret_file(directory, "google-rt.txt", keys["refresh_token"]),
        authority=sb.google_authority, smtp_host=keys["smtp_host"],
        smtp_port=int(keys["smtp_port"]),
        ca_file=sb.ca_file if ca_file == "sandbox" else ca_file,
    ), keys


@pytest_twisted.inlineCallbacks
def test_refresh_token_grant(sandbox: Sandbox, tmp_path: Path, services: Make):
    account, _ = google_account(sandbox, tmp_path)
    service = services(config_for(tmp_path / "state", account), start=False)
    tokens = []
    for _ in range(5):
        tokens.append((yield service.sources["gmail"].access_token()))
    assert len(set(tokens)) == 1
    record = sandbox.identity.google.check_access_token(tokens[0])
    assert record is not None and record.email == EMAIL
    assert record.scope == "https://mail.google.com/"
    assert len(sandbox.identity.google.access_tokens) == 1  # one request for five uses
    assert service.status()["gmail"].state == "ok"


@pytest_twisted.inlineCallbacks
def test_revoked_refresh_token_needs_a_new_one(sandbox: Sandbox, tmp_path: Path,
                                               services: Make):
    account, keys = google_account(sandbox, tmp_path)
    service = services(config_for(tmp_path / "state", account), start=False)
    resumed: list[str] = []
    service.on_signed_in(resumed.append)
    sandbox.identity.google.revoke(keys["refresh_token"])
    with pytest.raises(NeedsSignIn) as e:
        yield service.sources["gmail"].access_token()
    assert "invalid_grant: Token has been expired or revoked." in str(e.value)
    assert account.refresh_token_file in str(e.value)
    assert keys["refresh_token"] not in str(e.value)
    # the operator puts a new refresh token in the file: the account resumes
    fresh = sandbox.identity.google.mint_refresh_token(EMAIL, keys["client_id"])
    secret_file(tmp_path, "google-rt.txt", fresh + "  ")
    token = yield service.sources["gmail"].access_token()
    assert sandbox.identity.google.check_access_token(token) is not None
    assert resumed == ["gmail"]


@pytest_twisted.inlineCallbacks
def test_google_without_ca_file_does_not_trust_the_sandbox(sandbox: Sandbox,
                                                           tmp_path: Path, services: Make):
    account, _ = google_account(sandbox, tmp_path, ca_file=None)
    service = services(config_for(tmp_path / "state", account), start=False)
    with pytest.raises(TokenUnavailable) as e:
        yield service.sources["gmail"].access_token()
    assert "gmail" in str(e.value)
    assert sandbox.identity.google.access_tokens == {}


@pytest_twisted.inlineCallbacks
def test_the_file_watch_leaves_a_working_account_alone(sandbox: Sandbox, tmp_path: Path,
                                                      services: Make):
    """The periodic look at the files asks for nothing while nothing changed."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    account, _ = google_account(sandbox, tmp_path)
    service = services(config_for(tmp_path / "state", account))
    yield service.sources["gmail"].access_token()
    yield deferLater(reactor, 0.5, lambda: None)  # the status record is written
    asked = len(sandbox.identity.google.access_tokens)
    for _ in range(3):
        service._check_sign_ins()
        yield deferLater(reactor, 0.2, lambda: None)
    assert len(sandbox.identity.google.access_tokens) == asked
    assert not service.sources["gmail"].grant.credentials_changed()


@pytest_twisted.inlineCallbacks
def test_a_wrong_client_secret_is_named_and_a_corrected_file_is_read_within_seconds(
        sandbox: Sandbox, tmp_path: Path, services: Make):
    """Issue 23: invalid_client is the client secret, not a refresh token to replace;
    the corrected client_secret_file is picked up without `xrelay reload`."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    account, keys = google_account(sandbox, tmp_path)
    secret_file(tmp_path, "google-secret.txt", "GOCSPX-not-the-secret")
    service = services(config_for(tmp_path / "state", account))
    with pytest.raises(NeedsSignIn):
        yield service.sources["gmail"].access_token()
    status = service.status()["gmail"]
    assert status.state == "client secret rejected"
    assert status.last_error == "invalid_client: Unauthorized"
    assert account.client_secret_file in status.hint and "within seconds" in status.hint
    assert "refresh token" not in status.hint
    assert "GOCSPX-not-the-secret" not in repr(status)
    secret_file(tmp_path, "google-secret.txt", keys["client_secret"])  # the fix
    for _ in range(100):  # the service looks at the files every few seconds
        if service.status()["gmail"].state == "ok":
            break
        yield deferLater(reactor, 0.1, lambda: None)
    assert service.status()["gmail"].state == "ok"
