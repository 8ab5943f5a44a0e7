"""
End to end, as a user runs it: the installed `twistd xrelay`, a real SMTP client, and
the sandbox providers as the upstream, with every message going through the real path
(spool, token from the identity platform over HTTPS, STARTTLS, AUTH XOAUTH2).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import time
from email import message_from_bytes
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath

from tests.conftest import RelayProcess, free_port


def wait_for_files(folder: Path, pattern: str, timeout: float = 60) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(folder.rglob(pattern)) if folder.exists() else []
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no {pattern} under {folder} after {timeout} s")


@pytest.mark.skipif(os.path.exists("/etc/xrelay/xrelay.toml"),
                    reason="a system configuration exists; the sandbox default needs none")
def test_sandbox_default_relays_smtplib_message(tmp_path: Path, run_relay) -> None:
    """`twistd -n xrelay` with no configuration delivers into the sandbox mailbox."""
    # Its own port ($XRELAY_SANDBOX_PORT), not 2525, which another relay may hold.
    port = free_port()
    relay = run_relay(env={"XRELAY_SANDBOX_PORT": str(port)})
    relay.wait_for_port(port)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        refused = client.sendmail(
            "printer@example.com", ["client@example.net"],
            b"From: printer@example.com\r\nTo: client@example.net\r\n"
            b"Subject: scan 42\r\n\r\nThe scan is attached.\r\n")
    assert refused == {}
    (eml,) = wait_for_files(tmp_path / "xrelay-sandbox" / "mailbox", "*.eml")
    message = message_from_bytes(eml.read_bytes())
    assert message["Subject"] == "scan 42"
    assert message.get_payload() == "The scan is attached.\r\n"
    assert message["Received"] is not None
    envelope = json.loads(eml.with_suffix(".json").read_text())
    assert envelope["mail_from"] == "printer@example.com"
    assert envelope["rcpt_to"] == ["client@example.net"]
    # It went through XOAUTH2 with a token the sandbox identity platform issued.
    assert envelope["auth_mechanism"] == "XOAUTH2"
    log = relay.log()
    assert f"swaks --server 127.0.0.1:{port} " in log
    # twistd stops cleanly on SIGTERM, then exits with that signal as its status.
    assert relay.stop() == -signal.SIGTERM
    assert "Server Shut Down." in relay.log()


@defer.inlineCallbacks
def relay_one_message(relay: RelayProcess, port: int, sandbox, subject: bytes):
    """
    Once the relay listens on C{port}, send it one message with smtplib and wait (up to
    30 s) for the sandbox to receive it; fires with that one delivered message.
    """
    yield threads.deferToThread(relay.wait_for_port, port)

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("app@example.com", ["client@example.net"],
                            b"Subject: " + subject + b"\r\n\r\nhi\r\n")

    yield threads.deferToThread(send)
    for _ in range(300):
        if sandbox.mailbox.messages:
            break
        yield deferLater(reactor, 0.1, lambda: None)
    (delivered,) = sandbox.mailbox.messages
    return delivered


@pytest.fixture
def sandbox(tmp_path: Path):
    from xrelay.sandbox import Sandbox

    sb = Sandbox(FilePath(str(tmp_path / "sandbox")), reactor=reactor)
    sb.start()
    yield sb
    pytest_twisted.blockon(sb.stop())


def write_config(tmp_path: Path, sandbox, port: int, extra: str = "") -> Path:
    account = dict(sandbox.default_account())
    lines = ["[server]", f'listen = ["tcp:{port}:interface=127.0.0.1"]',
             'hostname = "relay.test"', 'state_dir = "state"', "",
             "[relay]", 'allow_networks = ["127.0.0.0/8"]', "", "[[accounts]]"]
    for key, value in account.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path = tmp_path / "xrelay.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@pytest_twisted.inlineCallbacks
def test_config_file_swaks_to_sandbox(tmp_path: Path, sandbox, run_relay) -> None:
    """`twistd -n xrelay --config FILE` and swaks, the way an administrator tries it."""
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed (Debian package swaks; .ci/run installs it)")
    port = free_port()
    config = write_config(tmp_path, sandbox, port)
    relay = run_relay("--config", str(config))
    yield threads.deferToThread(relay.wait_for_port, port)
    result = yield threads.deferToThread(
        subprocess.run,
        [swaks, "--server", f"127.0.0.1:{port}", "--from", "printer@example.com",
         "--to", "client@example.net", "--header", "Subject: from swaks"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 Ok: queued as " in result.stdout
    for _ in range(300):
        if sandbox.mailbox.messages:
            break
        yield deferLater(reactor, 0.1, lambda: None)
    (delivered,) = sandbox.mailbox.messages
    assert delivered.mail_from == "printer@example.com"
    assert list(delivered.rcpt_to) == ["client@example.net"]
    assert b"Subject: from swaks" in delivered.data
    # Nothing secret reached the relay's state or log.  (Stopped from a thread: the
    # sandbox in this reactor must answer the relay's QUIT while it shuts down.)
    yield threads.deferToThread(relay.stop)
    secrets = list(sandbox.identity.issued_secrets())
    assert secrets
    haystack = relay.log()
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            haystack += path.read_bytes().decode("latin-1")
    for secret in secrets:
        assert secret not in haystack


@pytest_twisted.inlineCallbacks
def test_tac_file_with_config_from_environment(tmp_path: Path, sandbox) -> None:
    """`twistd -ny xrelay.tac` finds its configuration in $XRELAY_CONFIG."""
    port = free_port()
    config = write_config(tmp_path, sandbox, port)
    tac = Path(__file__).resolve().parents[1] / "xrelay.tac"
    log_path = tmp_path / "tac.log"
    env = dict(os.environ, XRELAY_CONFIG=str(config))
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
         f"--logfile={log_path}", "-y", str(tac)],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    relay = RelayProcess(process, log_path)
    try:
        delivered = yield relay_one_message(relay, port, sandbox, b"from the tac")
        assert b"Subject: from the tac" in delivered.data
    finally:
        yield threads.deferToThread(relay.stop)


def test_tac_file_refuses_bad_config(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[server]\nlisten = 25\n")
    tac = Path(__file__).resolve().parents[1] / "xrelay.tac"
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
         "-y", str(tac)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env=dict(os.environ, XRELAY_CONFIG=str(tmp_path / "bad.toml")))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert f"xrelay: {tmp_path / 'bad.toml'}: server.listen: " in result.stderr
