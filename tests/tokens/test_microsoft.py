"""
Microsoft accounts against the sandbox identity platform: real msal over verified HTTPS,
real encrypted cache files, one token service per simulated process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import attrs
import msal
import pytest
import pytest_twisted
import requests
from twisted.internet import defer, reactor, threads
from twisted.internet.task import Clock, deferLater

from xrelay.sandbox import Sandbox
from xrelay.tokens import (NeedsSignIn, SignInFailed, TokenService, TokenUnavailable,
                           stored_status)
from xrelay.tokens.cache import KEY_ENVIRONMENT_VARIABLE

from .conftest import (PASSWORD, REDIRECT_URI, TENANT, USER, app_only_account,
                       config_for, delegated_account, secret_file, token_requests)

Make = Callable[..., TokenService]


@pytest.fixture(autouse=True)
def _own_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENVIRONMENT_VARIABLE, raising=False)


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_client_credentials_token_is_accepted_by_the_platform(sandbox: Sandbox, tmp_path: Path,
                                                              services: Make):
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)))
    token = yield service.sources["main"].access_token()
    record = sandbox.identity.check_access_token(token)
    assert record is not None and record.app_only
    assert record.audience.rstrip("/") == "https://outlook.office365.com"
    status = service.status()["main"]
    assert status.state == "ok"
    assert status.expires_at == pytest.approx(time.time() + 3599, abs=30)


@pytest_twisted.inlineCallbacks
def test_graph_accounts_ask_for_graph(sandbox: Sandbox, tmp_path: Path, services: Make):
    service = services(config_for(tmp_path / "state",
                                  app_only_account(sandbox, transport="graph")))
    token = yield service.sources["main"].access_token()
    assert sandbox.identity.check_access_token(token).audience.rstrip("/") == \
        "https://graph.microsoft.com"


@pytest_twisted.inlineCallbacks
def test_twenty_deliveries_one_token_request(sandbox: Sandbox, tmp_path: Path,
                                             services: Make):
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)),
                       start=False)
    source = service.sources["main"]
    concurrent = yield defer.gatherResults([source.access_token() for _ in range(10)])
    in_a_row = []
    for _ in range(10):
        in_a_row.append((yield source.access_token()))
    assert len(set(concurrent + in_a_row)) == 1
    assert len(token_requests(sandbox, "client_credentials")) == 1


@pytest_twisted.inlineCallbacks
def test_msal_runs_in_the_token_thread_pool(sandbox: Sandbox, tmp_path: Path,
                                            services: Make, monkeypatch):
    seen: list[str] = []
    original = msal.ConfidentialClientApplication.acquire_token_for_client

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(msal.ConfidentialClientApplication, "acquire_token_for_client", spy)
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)))
    yield service.sources["main"].access_token()
    assert seen and all("xrelay-tokens" in name for name in seen), seen


@pytest_twisted.inlineCallbacks
def test_ca_file_holds_against_requests_ca_bundle(sandbox: Sandbox, tmp_path: Path,
                                                  services: Make, monkeypatch):
    """A REQUESTS_CA_BUNDLE that lacks the sandbox CA must not replace ca_file."""
    bogus = tmp_path / "bogus.pem"
    bogus.write_bytes(open(requests.certs.where(), "rb").read())  # public roots only
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bogus))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bogus))
    # the control: requests on its own honours the variable and fails
    def plain_requests() -> None:
        s = requests.Session()
        s.verify = sandbox.ca_file
        s.get(f"{sandbox.authority}/{TENANT}/v2.0/.well-known/openid-configuration",
              timeout=10)
    with pytest.raises(requests.exceptions.SSLError):
        yield threads.deferToThread(plain_requests)
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)))
    token = yield service.sources["main"].access_token()
    assert sandbox.identity.check_access_token(token) is not None


@pytest_twisted.inlineCallbacks
def test_untrusted_authority_is_unavailable_not_trusted(sandbox: Sandbox, tmp_path: Path,
                                                        services: Make):
    service = services(config_for(tmp_path / "state",
                                  app_only_account(sandbox, ca_file=None)))
    with pytest.raises(TokenUnavailable) as e:
        yield service.sources["main"].access_token()
    assert "main" in str(e.value)
    assert token_requests(sandbox) == []


@pytest_twisted.inlineCallbacks
def test_platform_outage_backs_off_then_recovers(sandbox: Sandbox, tmp_path: Path,
                                                 services: Make):
    clock = Clock()
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)),
                       start=False, clock=clock)
    source = service.sources["main"]
    sandbox.identity.unavailable_status = 503
    with pytest.raises(TokenUnavailable) as e:
        yield source.access_token()
    assert "HTTP Error: 503" in str(e.value)
    assert e.value.retry_at == 5.0
    asked = len(sandbox.identity.requests)
    with pytest.raises(TokenUnavailable):  # backing off: the platform is not asked
        yield source.access_token()
    assert len(sandbox.identity.requests) == asked
    sandbox.identity.unavailable_status = None
    clock.advance(5)
    yield sleep(5.1)  # msal itself throttles a 503 for its Retry-After (5s by default)
    token = yield source.access_token()
    assert sandbox.identity.check_access_token(token) is not None
    assert service.status()["main"].state == "ok"


@pytest_twisted.inlineCallbacks
def test_wrong_client_secret_needs_operator(sandbox: Sandbox, tmp_path: Path,
                                            services: Make):
    wrong = secret_file(tmp_path, "wrong.txt", "not-the-secret")
    service = services(config_for(tmp_path / "state",
                                  app_only_account(sandbox, client_secret_file=wrong)))
    with pytest.raises(NeedsSignIn) as e:
        yield service.sources["main"].access_token()
    assert "invalid_client: AADSTS7000215" in str(e.value)
    assert wrong in str(e.value)  # which file to fix
    assert "not-the-secret" not in str(e.value)


@pytest_twisted.inlineCallbacks
def test_certificate_credential(sandbox: Sandbox, tmp_path: Path, services: Make):
    issued = sandbox.issue_certificate(("xrelay-app",), "app")
    app = sandbox.identity.register_app(
        sandbox.identity.tenants[next(iter(sandbox.identity.tenants))].domain,
        certificate_pem=open(issued.cert_file, "rb").read())
    account = app_only_account(sandbox, client_id=app.client_id, client_secret_file=None,
                               certificate_file=issued.cert_file,
                               certificate_key_file=issued.key_file)
    service = services(config_for(tmp_path / "state", account))
    token = yield service.sources["main"].access_token()
    assert sandbox.identity.check_access_token(token).client_id == app.client_id


@pytest_twisted.inlineCallbacks
def test_token_near_expiry_is_refreshed_before_use(sandbox: Sandbox, tmp_path: Path,
                                                   services: Make):
    clock = Clock()
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)),
                       clock=clock)
    source = service.sources["main"]
    first = yield source.access_token()
    assert len(token_requests(sandbox)) == 1
    clock.advance(3599 - 301)
    assert (yield source.access_token()) == first
    clock.advance(2)  # inside the margin: the refresh timer fires, and callers wait for it
    second = yield source.access_token()
    assert second != first
    assert len(token_requests(sandbox)) == 2
    assert sandbox.identity.check_access_token(second) is not None


# -- delegated ---------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def sign_in_with_device_code(service: TokenService, sandbox: Sandbox, name: str = "main"):
    prompt = yield service.start_device_code(name)
    done = service.finish_device_code(prompt)
    yield sleep(0.3)
    assert not done.called  # pending: nobody has approved yet
    sandbox.identity.approve_device_code(prompt.user_code, USER)
    status = yield done
    return prompt, status


@pytest_twisted.inlineCallbacks
def test_device_code_pending_then_approved(sandbox: Sandbox, tmp_path: Path, services: Make):
    sandbox.identity.device_code_interval = 1
    service = services(config_for(tmp_path / "state", delegated_account(sandbox, tmp_path)))
    with pytest.raises(NeedsSignIn) as e:
        yield service.sources["main"].access_token()
    assert "xrelay login main" in str(e.value)
    prompt = yield service.start_device_code("main")
    assert prompt.verification_uri.startswith(sandbox.authority)
    assert prompt.user_code in prompt.message
    done = service.finish_device_code(prompt)
    yield sleep(1.5)
    assert not done.called
    polls = [r for r in sandbox.identity.requests if r.grant_type.endswith("device_code")]
    assert polls and polls[-1].outcome.startswith("authorization_pending"), polls
    sandbox.identity.approve_device_code(prompt.user_code, USER)
    status = yield done
    assert status.state == "ok"
    token = yield service.sources["main"].access_token()
    record = sandbox.identity.check_access_token(token)
    assert record.upn == USER
    assert "SMTP.Send" in record.permissions


@pytest_twisted.inlineCallbacks
def test_device_code_expired(sandbox: Sandbox, tmp_path: Path, services: Make):
    sandbox.identity.device_code_interval = 1
    service = services(config_for(tmp_path / "state", delegated_account(sandbox, tmp_path)))
    prompt = yield service.start_device_code("main")
    done = service.finish_device_code(prompt)
    yield sleep(0.5)
    sandbox.identity.expire_device_codes()
    with pytest.raises(SignInFailed) as e:
        yield done
    assert "expired_token" in str(e.value)
    assert service.status()["main"].state == "needs sign-in"


@pytest_twisted.inlineCallbacks
def test_device_code_as_the_wrong_user_is_refused(sandbox: Sandbox, tmp_path: Path,
                                                  services: Make):
    sandbox.identity.device_code_interval = 1
    service = services(config_for(tmp_path / "state", delegated_account(sandbox, tmp_path)))
    sandbox.identity.add_user(TENANT, "someone@contoso.com", "pw")
    prompt = yield service.start_device_code("main")
    done = service.finish_device_code(prompt)
    sandbox.identity.approve_device_code(prompt.user_code, "someone@contoso.com")
    with pytest.raises(SignInFailed) as e:
        yield done
    assert "signed in as someone@contoso.com" in str(e.value)
    assert USER in str(e.value)


def browser_sign_in(auth_url: str, ca_file: str, username: str, password: str) -> str:
    """What a person does in the browser: load the page, post the form, get redirected."""
    page = requests.get(auth_url, verify=ca_file, timeout=10)
    assert page.status_code == 200 and 'id="signin"' in page.text
    import html
    import re
    fields = {html.unescape(k): html.unescape(v) for k, v in
              re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', page.text)}
    action = html.unescape(re.search(r'<form method="post" action="([^"]*)"', page.text)[1])
    fields.update(login=username, passwd=password, action="accept")
    answer = requests.post(urlparse(auth_url)._replace(path=action, query="").geturl(),
                           data=fields, verify=ca_file, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


@pytest_twisted.inlineCallbacks
def test_authorization_code_with_pkce(sandbox: Sandbox, tmp_path: Path, services: Make):
    service = services(config_for(tmp_path / "state",
                                  delegated_account(sandbox, tmp_path, flow="auth_code")))
    auth_url, flow = yield service.start_auth_code("main", REDIRECT_URI)
    query = parse_qs(urlparse(auth_url).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
    assert query["login_hint"] == [USER]
    location = yield threads.deferToThread(browser_sign_in, auth_url, sandbox.ca_file,
                                           USER, PASSWORD)
    assert location.startswith(REDIRECT_URI)
    params = {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}
    status = yield service.finish_auth_code("main", flow, params)
    assert status.state == "ok"
    token = yield service.sources["main"].access_token()
    assert sandbox.identity.check_access_token(token).upn == USER


@pytest_twisted.inlineCallbacks
def test_authorization_code_reply_for_another_flow_is_refused(sandbox: Sandbox,
                                                              tmp_path: Path, services: Make):
    service = services(config_for(tmp_path / "state",
                                  delegated_account(sandbox, tmp_path, flow="auth_code")))
    _, flow = yield service.start_auth_code("main", REDIRECT_URI)
    with pytest.raises(SignInFailed) as e:
        yield service.finish_auth_code("main", flow, {"code": "x", "state": "forged"})
    assert "state mismatch" in str(e.value)


@pytest_twisted.inlineCallbacks
def test_refresh_token_rotation_persists_across_restart(sandbox: Sandbox, tmp_path: Path,
                                                        services: Make):
    sandbox.identity.device_code_interval = 1
    state = tmp_path / "state"
    account = delegated_account(sandbox, tmp_path)
    clock = Clock()
    first = services(config_for(state, account), clock=clock)
    yield sign_in_with_device_code(first, sandbox)
    clock.advance(3599)  # the access token is due: refreshing rotates the refresh token
    yield first.sources["main"].access_token()
    assert [r.outcome for r in token_requests(sandbox, "refresh_token")] == ["ok"]
    yield first.stopService()
    # the sandbox rotates strictly: only the newest refresh token is valid now
    assert sum(rt.valid for rt in sandbox.identity.refresh_tokens.values()) == 1
    second = services(config_for(state, account))
    cached = yield second.sources["main"].access_token()  # from the encrypted cache
    assert sandbox.identity.check_access_token(cached).upn == USER
    assert len(token_requests(sandbox, "refresh_token")) == 1
    # the next refresh must use the rotated refresh token: the first one is dead now
    second.sources["main"].token_rejected(cached)
    token = yield second.sources["main"].access_token()
    assert token != cached
    assert sandbox.identity.check_access_token(token).upn == USER
    assert [r.outcome for r in token_requests(sandbox, "refresh_token")] == ["ok", "ok"]


@pytest_twisted.inlineCallbacks
def test_operator_refresh_token(sandbox: Sandbox, tmp_path: Path, services: Make):
    """flow = refresh_token: the file's token is used once, then msal's rotated ones."""
    sandbox.identity.device_code_interval = 1
    helper = services(config_for(tmp_path / "elsewhere", delegated_account(sandbox, tmp_path)))
    yield sign_in_with_device_code(helper, sandbox)
    valid = [rt.token for rt in sandbox.identity.refresh_tokens.values() if rt.valid]
    rt_file = secret_file(tmp_path, "rt.txt", valid[0])
    account = delegated_account(sandbox, tmp_path, flow="refresh_token",
                                refresh_token_file=rt_file)
    account = attrs.evolve(account, client_id=helper.config.accounts[0].client_id)
    service = services(config_for(tmp_path / "state", account))
    token = yield service.sources["main"].access_token()
    assert sandbox.identity.check_access_token(token).upn == USER
    service.sources["main"].token_rejected(token)
    again = yield service.sources["main"].access_token()  # uses the rotated token
    assert again != token
    assert [r.outcome for r in token_requests(sandbox, "refresh_token")] == ["ok", "ok"]


@pytest_twisted.inlineCallbacks
def test_revocation_needs_sign_in_then_login_resumes(sandbox: Sandbox, tmp_path: Path,
                                                     services: Make):
    """
    The daemon and `xrelay login` are separate processes sharing the state folder: here
    two token services.  The daemon notices the new sign-in on its own and says so.
    """
    sandbox.identity.device_code_interval = 1
    state = tmp_path / "state"
    account = delegated_account(sandbox, tmp_path)
    clock = Clock()
    daemon = services(config_for(state, account), clock=clock)
    resumed: list[str] = []
    daemon.on_signed_in(resumed.append)
    yield sign_in_with_device_code(daemon, sandbox)
    assert resumed == ["main"]
    sandbox.identity.revoke(USER)
    daemon.sources["main"].token_rejected((yield daemon.sources["main"].access_token()))
    with pytest.raises(NeedsSignIn) as e:
        yield daemon.sources["main"].access_token()
    assert "invalid_grant" in str(e.value)
    assert "xrelay login main" in str(e.value)
    assert daemon.status()["main"].state == "needs sign-in"
    assert [s.state for s in stored_status(config_for(state, account))] == ["needs sign-in"]
    # `xrelay login main`, another process
    login = services(config_for(state, account), start=False)
    yield sign_in_with_device_code(login, sandbox)
    yield login.run_stop()
    asked = len(token_requests(sandbox))
    clock.advance(5)  # the daemon's periodic look at the cache file
    for _ in range(50):
        if resumed == ["main", "main"]:
            break
        yield sleep(0.1)
    assert resumed == ["main", "main"]
    token = yield daemon.sources["main"].access_token()
    assert sandbox.identity.check_access_token(token).upn == USER
    assert len(token_requests(sandbox)) == asked  # the access token came from the new cache
    assert daemon.status()["main"].state == "ok"
    assert daemon.status()["main"].last_error is None


@pytest_twisted.inlineCallbacks
def test_stored_status_for_the_command(sandbox: Sandbox, tmp_path: Path, services: Make):
    state = tmp_path / "state"
    config = config_for(state, app_only_account(sandbox),
                        app_only_account(sandbox, name="other"))
    service = services(config, start=False)
    yield service.sources["main"].access_token()
    yield service.run_stop()
    statuses = {s.account: s for s in stored_status(config)}
    assert statuses["main"].state == "ok"
    assert statuses["main"].expires_at == pytest.approx(time.time() + 3599, abs=30)
    assert statuses["main"].last_refresh == pytest.approx(time.time(), abs=30)
    assert statuses["other"].state == "no token"


@pytest_twisted.inlineCallbacks
def test_stopping_ends_a_device_code_wait(sandbox: Sandbox, tmp_path: Path, services: Make):
    sandbox.identity.device_code_interval = 1
    service = services(config_for(tmp_path / "state", delegated_account(sandbox, tmp_path)))
    prompt = yield service.start_device_code("main")
    done = service.finish_device_code(prompt)
    yield service.stopService()  # returns once the pool's threads are joined
    with pytest.raises(SignInFailed) as e:
        yield done
    assert "cancelled" in str(e.value)


@pytest_twisted.inlineCallbacks
def test_reconfigure_keeps_unchanged_sources(sandbox: Sandbox, tmp_path: Path,
                                             services: Make):
    state = tmp_path / "state"
    main = app_only_account(sandbox)
    service = services(config_for(state, main))
    source = service.sources["main"]
    token = yield source.access_token()
    service.reconfigure(config_for(state, main, app_only_account(sandbox, name="more")))
    assert service.sources["main"] is source
    assert (yield service.sources["more"].access_token()) != token
    service.reconfigure(config_for(state, attrs.evolve(main, transport="graph")))
    assert set(service.sources) == {"main"}
    graph = yield service.sources["main"].access_token()
    assert sandbox.identity.check_access_token(graph).audience.rstrip("/") == \
        "https://graph.microsoft.com"


def test_sign_in_refused_for_app_only_accounts(sandbox: Sandbox, tmp_path: Path,
                                               services: Make):
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)),
                       start=False)
    failure = []
    service.start_device_code("main").addErrback(failure.append)
    assert failure and failure[0].check(SignInFailed)
    assert "does not sign in interactively" in str(failure[0].value)


@pytest_twisted.inlineCallbacks
def test_expired_client_secret_is_named_with_its_fix(sandbox: Sandbox, tmp_path: Path,
                                                     services: Make):
    sandbox.identity.expire_client_secret(sandbox.default_app.client_id)
    account = app_only_account(sandbox)
    service = services(config_for(tmp_path / "state", account))
    with pytest.raises(NeedsSignIn) as e:
        yield service.sources["main"].access_token()
    assert e.value.state == "client secret expired"
    status = service.status()["main"]
    assert status.state == "client secret expired"
    assert status.last_error.startswith("invalid_client: AADSTS7000222: ")
    assert status.hint.startswith(
        f"create a new client secret for app {account.client_id} (Entra ID > App "
        "registrations > Certificates & secrets > New client secret")
    assert account.client_secret_file in status.hint
    assert str(e.value).startswith("account 'main': client secret expired (invalid_client: "
                                   "AADSTS7000222: ")


@pytest_twisted.inlineCallbacks
def test_wrong_secret_is_rejected_not_needs_sign_in(sandbox: Sandbox, tmp_path: Path,
                                                    services: Make):
    wrong = secret_file(tmp_path, "wrong.txt", "not-the-secret")
    service = services(config_for(tmp_path / "state",
                                  app_only_account(sandbox, client_secret_file=wrong)))
    with pytest.raises(NeedsSignIn):
        yield service.sources["main"].access_token()
    assert service.status()["main"].state == "client secret rejected"
    assert service.status()["main"].failing_since is not None
    # the right secret into the same file: the next look at the files gets a token
    secret_file(tmp_path, "wrong.txt", sandbox.default_app.client_secret)
    assert service.sources["main"].grant.credentials_changed()
    token = yield service.sources["main"].access_token()
    assert sandbox.identity.check_access_token(token) is not None
    assert service.status()["main"].state == "ok"
    assert service.status()["main"].failing_since is None


@pytest.mark.parametrize("code, state, fix", [
    (53003, "blocked by conditional access", "look up the sign-in of the app "),
    (65001, "admin consent missing", "in Entra ID > App registrations > "),
])
@pytest_twisted.inlineCallbacks
def test_tenant_policy_refusals_are_named(sandbox: Sandbox, tmp_path: Path, services: Make,
                                          code: int, state: str, fix: str):
    app = sandbox.default_app
    sandbox.identity.refuse_app(app.client_id, code)
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)))
    with pytest.raises(NeedsSignIn):
        yield service.sources["main"].access_token()
    status = service.status()["main"]
    assert status.state == state
    assert status.last_error.startswith(f"invalid_grant: AADSTS{code}: ")
    assert status.hint.startswith(fix)
    if code == 65001:
        assert "Office 365 Exchange Online > SMTP.SendAsApp (Application)" in status.hint
    sandbox.identity.refuse_app(app.client_id, None)


@pytest_twisted.inlineCallbacks
def test_the_file_watch_leaves_a_working_account_alone(sandbox: Sandbox, tmp_path: Path,
                                                      services: Make):
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)))
    yield service.sources["main"].access_token()
    yield sleep(0.5)  # the status record is written
    asked = len(token_requests(sandbox))
    for _ in range(3):
        service._check_sign_ins()
        yield sleep(0.2)
    assert len(token_requests(sandbox)) == asked
    # a rotated secret (same value, new file) is read and tried at once
    secret_file(Path(app_only_account(sandbox).client_secret_file).parent,
                "sandbox-client-secret.txt", sandbox.default_app.client_secret)
    service._check_sign_ins()
    for _ in range(50):
        if len(token_requests(sandbox)) > asked:
            break
        yield sleep(0.1)
    assert len(token_requests(sandbox)) == asked + 1
    yield service.sources["main"].access_token()  # joins that refresh
    assert service.status()["main"].state == "ok"
