"""
A full disk during a token refresh does not stop delivery: the new token is used from
memory (and the failure logged), and written to the cache once the disk takes it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.tokens.conftest import app_only_account, config_for, token_requests
from xrelay.tokens.cache import AccountCache


@pytest_twisted.inlineCallbacks
def test_a_token_that_cannot_be_cached_is_used_from_memory(
        sandbox: Any, tmp_path: Path, services: Any, logs: Any,
        monkeypatch: pytest.MonkeyPatch) -> Any:
    real_replace = os.replace
    full = {"on": True}

    def replace(source: Any, target: Any, *args: Any, **kw: Any) -> None:
        if full["on"] and str(target).endswith(".cache"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target, *args, **kw)

    monkeypatch.setattr(os, "replace", replace)
    service = services(config_for(tmp_path / "state", app_only_account(sandbox)))
    token = yield service.sources["main"].access_token()
    assert sandbox.identity.check_access_token(token) is not None
    assert service.status()["main"].state == "ok"
    assert "could not be written (No space left on device); the token is used from " \
           "memory" in logs.text()
    cache_file = tmp_path / "state" / "tokens" / "main.cache"
    assert not cache_file.exists()
    assert [n for n in os.listdir(cache_file.parent) if n.endswith(".tmp")] == []
    # Used again from memory: no new request to the identity platform.
    requests = len(token_requests(sandbox))
    again = yield service.sources["main"].access_token()
    assert again == token and len(token_requests(sandbox)) == requests

    full["on"] = False  # space returns: the next refresh is written to the cache
    service.sources["main"].token_rejected(token)
    fresh = yield service.sources["main"].access_token()
    assert sandbox.identity.check_access_token(fresh) is not None
    assert cache_file.exists()
    from xrelay.tokens.cache import load_key

    stored = AccountCache.open(str(tmp_path / "state"), "main",
                               load_key(str(tmp_path / "state"))).read()
    assert stored.get("msal")
