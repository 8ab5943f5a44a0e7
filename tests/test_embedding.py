"""
docs/embedding.md's example, run exactly as the document shows it: a twisted.web site
and xrelay in one program, with the program's own C{twisted.cred} checker (a user no
configuration file names, signing in with SMTP AUTH after STARTTLS) and its own inbound
handler (one recipient domain refused), delivering to the sandbox.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath

from tests.admin.conftest import account_toml
from tests.conftest import RelayProcess, free_port
from tests.inbound.harness import Certificates, certificates

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "web_and_mail.py"
DOCUMENT = ROOT / "docs" / "embedding.md"
PASSWORD = "shop password, not in any file"


def test_the_document_shows_the_example_verbatim() -> None:
    assert EXAMPLE.read_text() in DOCUMENT.read_text()


@pytest.fixture
def sandbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    from xrelay.sandbox import Sandbox

    sb = Sandbox(FilePath(str(tmp_path / "sandbox")), reactor=reactor)
    sb.start()
    yield sb
    pytest_twisted.blockon(sb.stop())


def write_config(tmp_path: Path, sandbox, smtp_port: int  # type: ignore[no-untyped-def]
                 ) -> tuple[Path, Certificates]:
    tls = certificates(tmp_path)
    path = tmp_path / "xrelay.toml"
    path.write_text(
        "[server]\n"
        f'listen = ["tcp:{smtp_port}:interface=127.0.0.1"]\n'
        'hostname = "relay.test"\nstate_dir = "state"\n'
        f'tls_cert = "{tls.cert_file}"\ntls_key = "{tls.key_file}"\n\n'
        # Loopback is not a device network: only the shop's signed-in user may relay.
        '[relay]\nallow_networks = ["192.0.2.0/24"]\n\n'
        + account_toml(dict(sandbox.default_account())))
    return path, tls


@pytest_twisted.inlineCallbacks
def test_web_and_mail_example(tmp_path: Path, sandbox) -> None:  # type: ignore[no-untyped-def]
    smtp_port, http_port = free_port(), free_port()
    config, tls = write_config(tmp_path, sandbox, smtp_port)
    log_path = tmp_path / "example.log"
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLE), str(config), str(http_port)], cwd=tmp_path,
        env=dict(os.environ, WEBSHOP_SMTP_PASSWORD=PASSWORD),
        stdin=subprocess.DEVNULL, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    program = RelayProcess(process, log_path)
    try:
        yield threads.deferToThread(program.wait_for_port, smtp_port)
        yield threads.deferToThread(program.wait_for_port, http_port)
        context = ssl.create_default_context(cafile=tls.ca_file)

        def send() -> dict:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
                client.starttls(context=context)
                try:
                    client.login("webshop", "wrong password")
                except smtplib.SMTPAuthenticationError as e:
                    assert (e.smtp_code, e.smtp_error) == (
                        535, b"5.7.8 Authentication credentials invalid")
                else:
                    raise AssertionError("a wrong password was accepted")
                client.login("webshop", PASSWORD)
                return client.sendmail(
                    "orders@example.com",
                    ["customer@example.net", "spy@competitor.example"],
                    b"From: orders@example.com\r\nTo: customer@example.net\r\n"
                    b"Subject: order 1001\r\n\r\nYour order has shipped.\r\n")

        refused = yield threads.deferToThread(send)
        assert refused == {"spy@competitor.example": (
            550, b"5.7.1 Mail to competitor.example is not relayed")}
        for _ in range(600):
            if sandbox.mailbox.messages:
                break
            yield deferLater(reactor, 0.1, lambda: None)
        (delivered,) = sandbox.mailbox.messages
        assert delivered.mail_from == "orders@example.com"
        assert list(delivered.rcpt_to) == ["customer@example.net"]
        assert b"Subject: order 1001" in delivered.data
        page = yield threads.deferToThread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{http_port}/",
                                           timeout=30).read())
        assert page == b"The shop is open; its mail goes out through xrelay.\n"
        # Unauthenticated, loopback is not a device network: relaying is refused.

        def anonymous() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
                client.starttls(context=context)
                client.ehlo()
                return client.mail("orders@example.com")

        code, text = yield threads.deferToThread(anonymous)
        assert (code, text[:30]) == (550, b"5.7.1 Relaying denied: your ad")
        assert "authenticated as webshop (PLAIN)" in program.log()
        assert PASSWORD not in program.log()
    finally:
        # From a thread: the sandbox in this reactor answers the relay's QUIT meanwhile.
        yield threads.deferToThread(program.stop)
