"""
Fixtures for the token service tests: a started sandbox, configurations pointing at it,
token services that are stopped after the test, and every log line captured (Twisted's
and the standard library's, msal's included) for the secret-leak checks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.filepath import FilePath

from xrelay.addresses import SenderPattern
from xrelay.config import AccountConfig, Config, ServerConfig
from xrelay.sandbox import Sandbox
from xrelay.tokens import TokenService

TENANT = "contoso.onmicrosoft.com"
USER = "relay@contoso.com"
PASSWORD = "correct horse battery staple 42"
REDIRECT_URI = "http://localhost:8025/signin/callback"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(FilePath(str(tmp_path / "sandbox")))
    sb.start()
    yield sb
    pytest_twisted.blockon(sb.stop())


@attrs.define
class CapturedLogs:
    lines: list[str] = attrs.field(factory=list)

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def logs() -> Iterator[CapturedLogs]:
    """Everything logged during the test, formatted, plus the raw event fields."""
    captured = CapturedLogs()

    def observe(event: dict[str, Any]) -> None:
        captured.lines.append(formatEvent(event) or "")
        captured.lines.append(repr({k: v for k, v in event.items() if k != "log_logger"}))
        failure = event.get("log_failure")
        if failure is not None:
            captured.lines.append(failure.getTraceback())

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.lines.append(self.format(record))
            captured.lines.append(repr(record.args))

    handler = Handler(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    globalLogPublisher.addObserver(observe)
    yield captured
    globalLogPublisher.removeObserver(observe)
    root.removeHandler(handler)
    root.setLevel(old_level)


def secret_file(directory: Path, name: str, content: str) -> str:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, content.encode() + b"\n")
    os.close(fd)
    return str(path)


def app_only_account(sb: Sandbox, **changes: Any) -> AccountConfig:
    keys = sb.default_account()
    values: dict[str, Any] = dict(
        name="main", provider="microsoft", user=keys["user"], flow="client_credentials",
        senders=(SenderPattern.parse("*"),), tenant=keys["tenant"],
        client_id=keys["client_id"], client_secret_file=keys["client_secret_file"],
        authority=keys["authority"], ca_file=keys["ca_file"],
        smtp_host=keys["smtp_host"], smtp_port=keys["smtp_port"],
    )
    values.update(changes)
    return AccountConfig(**values)


def delegated_account(sb: Sandbox, directory: Path, flow: str = "device_code",
                      **changes: Any) -> AccountConfig:
    """A public client app and a user in the sandbox, and an account for them."""
    app = sb.identity.register_app(TENANT, public_client=True, redirect_uris=[REDIRECT_URI])
    if sb.identity.user(USER) is None:
        sb.identity.add_user(TENANT, USER, PASSWORD)
    values: dict[str, Any] = dict(
        name="main", provider="microsoft", user=USER, flow=flow,
        senders=(SenderPattern.parse("*@contoso.com"),), tenant=TENANT,
        client_id=app.client_id, authority=sb.authority, ca_file=sb.ca_file,
    )
    values.update(changes)
    return AccountConfig(**values)


def config_for(state_dir: Path, *accounts: AccountConfig) -> Config:
    return Config(server=ServerConfig(hostname="relay.test", state_dir=str(state_dir)),
                  accounts=tuple(accounts))


@pytest.fixture
def services() -> Iterator[Callable[..., TokenService]]:
    """Make started token services; each is stopped after the test."""
    made: list[TokenService] = []

    def make(config: Config, start: bool = True, **kwargs: Any) -> TokenService:
        service = TokenService(config, **kwargs)
        if start:
            service.startService()
        made.append(service)
        return service

    yield make
    for service in made:
        if service.running:
            pytest_twisted.blockon(service.stopService())
        else:
            pytest_twisted.blockon(service.run_stop())


def token_requests(sb: Sandbox, grant_type: str | None = None) -> list[Any]:
    return [r for r in sb.identity.requests
            if r.endpoint == "token" and (grant_type is None or r.grant_type == grant_type)]
