"""A started sandbox per test, an account for it, and token sources with real tokens."""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.python.filepath import FilePath

from xrelay.addresses import SenderPattern
from xrelay.config import AccountConfig
from xrelay.envelope import OutboundMessage
from xrelay.sandbox import Sandbox
from xrelay.transport.testing import ClientCredentialsTokenSource

OUTLOOK_SCOPE = "https://outlook.office365.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"


@pytest.fixture
def sandbox(tmp_path: Any) -> Iterator[Sandbox]:
    sb = Sandbox(FilePath(str(tmp_path / "sandbox")), reactor=reactor)
    sb.start()
    yield sb
    pytest_twisted.blockon(sb.stop())


def account_for(sb: Sandbox, **overrides: Any) -> AccountConfig:
    raw = sb.default_account()
    values: dict[str, Any] = dict(
        name=raw["name"], provider=raw["provider"], user=raw["user"], flow=raw["flow"],
        senders=(SenderPattern.parse("*"),), tenant=raw["tenant"],
        client_id=raw["client_id"], client_secret_file=raw["client_secret_file"],
        authority=raw["authority"], smtp_host=raw["smtp_host"],
        smtp_port=raw["smtp_port"], ca_file=raw["ca_file"], graph_url=raw["graph_url"],
    )
    values.update(overrides)
    return AccountConfig(**values)


def tokens_for(sb: Sandbox, scope: str = OUTLOOK_SCOPE, first: str | None = None
               ) -> ClientCredentialsTokenSource:
    raw = sb.default_account()
    with open(raw["client_secret_file"]) as f:
        secret = f.read().strip()
    return ClientCredentialsTokenSource(
        f"{sb.authority}/{raw['tenant']}/oauth2/v2.0/token", raw["client_id"], secret,
        scope, sb.ca_file, reactor, first=first,
    )


def message_file(directory: Any, data: bytes, sender: str = "scanner@example.com",
                 recipients: tuple[str, ...] = ("alice@example.net",),
                 entry_id: str = "entry-1", **kw: Any) -> OutboundMessage:
    path = os.path.join(str(directory), f"{entry_id}.eml")
    with open(path, "wb") as f:
        f.write(data)
    return OutboundMessage(entry_id, sender, recipients, path, len(data), **kw)


def simple_message(sender: str = "scanner@example.com", subject: str = "scan") -> bytes:
    return (
        f"From: Scanner <{sender}>\r\nTo: alice@example.net\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\n\r\n"
        "Your scan is attached.\r\n"
    ).encode()
