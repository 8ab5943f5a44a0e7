"""
The AADSTS rows added for issue 23, each driven through the real token source (msal
against the sandbox identity platform over HTTPS): the account's state and the fix
that `xrelay accounts` shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from xrelay.sandbox import Sandbox
from xrelay.tokens import NeedsSignIn, SignInFailed, TokenService

from .conftest import app_only_account, config_for, delegated_account

Make = Callable[..., TokenService]

ROWS = [
    (7000112, "app registration misconfigured", "Enabled for users to sign-in"),
    (50011, "app registration misconfigured", "Redirect URIs"),
    (500011, "app not found in tenant", "Exchange Online licences"),
    (90002, "tenant not found", "Directory (tenant) ID"),
    (50057, "user sign-in blocked", "unblock sign-in"),
    (50053, "user sign-in blocked", "smart lockout"),
    (50055, "user sign-in blocked", "expired password"),
    (530003, "blocked by conditional access", "managed device"),
    (50158, "blocked by conditional access", "external security challenge"),
    (7000218, "app registration misconfigured", "client secret's Value"),
]


@pytest.mark.parametrize("code, state, fix", ROWS)
@pytest_twisted.inlineCallbacks
def test_refusal_is_named_with_its_fix(sandbox: Sandbox, tmp_path: Path, services: Make,
                                       code: int, state: str, fix: str):
    app = sandbox.default_app
    sandbox.identity.refuse_app(app.client_id, code)
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)))
    with pytest.raises(NeedsSignIn):
        yield service.sources["main"].access_token()
    status = service.status()["main"]
    assert status.state == state
    assert f"AADSTS{code}: " in status.last_error
    assert fix in status.hint
    assert "xrelay login" not in status.hint or code in (50057, 50053, 50055)
    sandbox.identity.refuse_app(app.client_id, None)


@pytest_twisted.inlineCallbacks
def test_device_code_with_public_client_flows_off_points_at_the_portal(
        sandbox: Sandbox, tmp_path: Path, services: Make) -> Any:
    """AADSTS7000218 on the device code flow: `xrelay login` would fail the same way."""
    sandbox.identity.device_code_interval = 1
    account = delegated_account(sandbox, tmp_path)
    sandbox.identity.apps[account.client_id].public_client = False  # the portal's switch
    service = services(config_for(tmp_path / "state", account))
    prompt = yield service.start_device_code("main")
    done = service.finish_device_code(prompt)
    yield deferLater(reactor, 0.3, lambda: None)
    from tests.tokens.conftest import USER

    sandbox.identity.approve_device_code(prompt.user_code, USER)
    with pytest.raises(SignInFailed) as e:
        yield done
    # What `xrelay login` prints: the portal's switch, not "run `xrelay login`".
    assert "AADSTS7000218" in str(e.value)
    assert "Allow public client flows\" to Yes" in str(e.value)
    assert "`xrelay login` fails the same way" in str(e.value)
