"""
The embedding API as L{xrelay.interfaces} and docs/embedding.md promise it: a program
builds the relay with L{xrelay.makeService}, bringing its own spool (here the public
test double L{xrelay.testing.MemorySpool}) and its own token source for an account (a
token it obtains its own way: here the client credentials grant against the sandbox's
identity platform, over verified HTTPS), and the relay delivers through them to the
sandbox's Exchange-like server.  In process, real sockets on loopback.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.python.filepath import FilePath
from zope.interface.verify import verifyObject

import xrelay
from tests.admin.conftest import account_toml
from tests.conftest import free_port
from tests.waiting import until
from xrelay.interfaces import ISpool, ITokenSource
from xrelay.sandbox import Sandbox
from xrelay.testing import MemorySpool
from xrelay.transport.testing import ClientCredentialsTokenSource


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    sb = Sandbox(FilePath(str(tmp_path / "sandbox")), reactor=reactor)
    sb.start()
    yield sb
    pytest_twisted.blockon(sb.stop())


@pytest_twisted.ensureDeferred
async def test_embedding_with_a_memory_spool_and_an_own_token_source(
        tmp_path: Path, sandbox: Sandbox) -> None:
    raw = dict(sandbox.default_account())
    port = free_port()
    (tmp_path / "xrelay.toml").write_text(
        f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\nhostname = "relay.test"\n'
        'state_dir = "state"\n\n' + account_toml(raw))
    config = xrelay.read_config(str(tmp_path / "xrelay.toml"))
    spool = MemorySpool(directory=str(tmp_path / "memory-spool"))
    # The program's own token source (its vault, its own OAuth client): the relay must
    # use it for this account and never start a sign-in of its own for it.
    secret = Path(raw["client_secret_file"]).read_text().strip()
    tokens = ClientCredentialsTokenSource(
        f"{sandbox.authority}/{raw['tenant']}/oauth2/v2.0/token", raw["client_id"],
        secret, "https://outlook.office365.com/.default", sandbox.ca_file, reactor,
        account_name="sandbox")
    assert verifyObject(ISpool, spool) and verifyObject(ITokenSource, tokens)

    relay = xrelay.makeService(config, reactor=reactor, spool=spool,
                               token_sources={"sandbox": tokens})
    assert relay.spool is spool and relay.tokens.source_for("sandbox") is tokens
    assert "sandbox" not in relay.tokens.sources  # no msal source made for it
    relay.startService()
    try:
        assert spool.recovered  # recovered first, as the durable spool would be

        def send() -> dict[str, Any]:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                return client.sendmail(
                    "orders@example.com", ["customer@example.net"],
                    b"From: orders@example.com\r\nTo: customer@example.net\r\n"
                    b"Subject: embedded\r\n\r\nthrough a memory spool\r\n")

        assert await threads.deferToThread(send) == {}
        assert len(spool.stored) == 1  # accepted into the program's spool
        await until(lambda: len(sandbox.mailbox.messages) == 1)
        (delivered,) = sandbox.mailbox.messages
        assert b"Subject: embedded" in delivered.data
        assert list(delivered.rcpt_to) == ["customer@example.net"]
        assert tokens.fetched == 1  # the program's source got the token
        await until(lambda: list(spool.entries()) == [])  # delivered: gone from it
        assert relay.tokens.status()["sandbox"].state == "ok"
    finally:
        await relay.stopService()


def test_token_sources_must_name_configured_accounts(tmp_path: Path,
                                                     sandbox: Sandbox) -> None:
    (tmp_path / "xrelay.toml").write_text(
        '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\nhostname = "relay.test"\n'
        'state_dir = "state"\n\n' + account_toml(dict(sandbox.default_account())))
    config = xrelay.read_config(str(tmp_path / "xrelay.toml"))
    with pytest.raises(ValueError, match="accounts the configuration does not have: "
                                         "nosuch"):
        xrelay.makeService(config, reactor=reactor, spool=MemorySpool(),
                           token_sources={"nosuch": object()})  # type: ignore[dict-item]


def test_the_package_lists_the_embedding_api_and_stays_cheap() -> None:
    """Every name of __all__ resolves; importing xrelay imports no twisted.mail."""
    probe = ("import sys, xrelay\n"
             "assert 'twisted.mail' not in sys.modules, 'twisted.mail imported'\n"
             "assert 'twisted.internet.reactor' not in sys.modules, 'reactor installed'\n"
             "for name in xrelay.__all__: getattr(xrelay, name)\n"
             "print(len(xrelay.__all__))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(xrelay.__all__) == sorted(xrelay._HOMES)
    assert {"makeService", "read_config", "IInboundHandler", "ISpool", "ITokenSource",
            "PolicyHandler", "Refusal", "InboundSession"} <= set(xrelay.__all__)
