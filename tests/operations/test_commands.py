"""
The installed `xrelay` command, run as a subprocess against a relay daemon (a `twistd`
subprocess) that delivers into the sandbox running in this test process; and on the
spool alone when no daemon runs.
"""

from __future__ import annotations

import os
import re
import smtplib
import subprocess
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue

from tests.conftest import RelayProcess, bin_path
from tests.admin.conftest import BOSS, start_relay, write_config  # noqa: F401
from tests.admin.test_web import until
from xrelay.operations.control import SpoolLock, wait_for_socket

HERE = Path(__file__).resolve().parent


def environment(world: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["XRELAY_CONFIG"] = str(world.config_path)
    return env


async def start_daemon(world: Any) -> RelayProcess:
    log_path = world.tmp / "twistd.log"
    process = subprocess.Popen(
        [bin_path("twistd"), "-n", "--pidfile=", f"--logfile={log_path}", "xrelay"],
        cwd=world.tmp, env=environment(world), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=open(world.tmp / "twistd.stderr", "ab"))
    daemon = RelayProcess(process, log_path)
    try:
        await deferToThread(wait_for_socket, str(world.state_dir), 60)
    except Exception as e:
        daemon.stop()
        raise AssertionError(f"the daemon did not start:\n{daemon.log()}") from e
    return daemon


@pytest.fixture
def daemons() -> Any:
    started: list[RelayProcess] = []
    yield started
    for d in started:
        # Stopped from a thread while the reactor runs: the sandbox in this process
        # must answer the daemon's QUIT, or every stop waits for its timeout.
        pytest_twisted.blockon(deferToThread(d.stop))


async def xrelay(world: Any, *args: str) -> tuple[int, str, str]:
    out, err, code = await getProcessOutputAndValue(
        bin_path("xrelay"), args, env=environment(world), path=str(world.tmp))
    return code, out.decode(), err.decode()


async def smtp_send(port: int, sender: str, recipient: str) -> str:
    def send() -> str:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("tester")
            client.mail(sender)
            client.rcpt(recipient)
            code, text = client.data(f"Subject: for {recipient}\r\n\r\nhello\r\n".encode())
            assert code == 250, (code, text)
            return text.decode().rsplit(" ", 1)[-1]  # "Ok: queued as <id>"
    return await deferToThread(send)


def delivered_to(world: Any, recipient: str) -> list[Any]:
    return [m for m in world.sandbox.mailbox.messages if recipient in m.rcpt_to]


@pytest_twisted.ensureDeferred
async def test_queue_commands_against_the_running_daemon(world, daemons) -> None:
    write_config(world, delegated=True, first_retry=600)
    sb = world.sandbox
    for who in ("later@example.net", "drop@example.net", "back@example.net"):
        sb.exchange.reject_recipient(who, "451 4.2.1 Mailbox temporarily unavailable")
    daemons.append(await start_daemon(world))
    later = await smtp_send(world.smtp_port, "printer@sandbox.example", "later@example.net")
    drop = await smtp_send(world.smtp_port, "printer@sandbox.example", "drop@example.net")
    back = await smtp_send(world.smtp_port, "printer@sandbox.example", "back@example.net")

    async def listing() -> str:
        code, out, err = await xrelay(world, "queue", "list")
        assert code == 0, err
        return out

    for _ in range(300):
        out = await listing()
        if out.count("\tdeferred\t") == 3:
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    assert re.search(rf"^{re.escape(later)}\tdeferred\t1 attempts\t<printer@sandbox.example> "
                     r"-> later@example.net\tlast: 451 4\.2\.1 Mailbox temporarily unavailable$", out, re.M), out

    code, out, err = await xrelay(world, "queue", "show", later)
    assert code == 0, err
    assert "Subject: for later@example.net" in out and "state: deferred" in out

    # retry: the upstream takes it now.
    del sb.exchange.rejected_recipients["later@example.net"]
    code, out, err = await xrelay(world, "queue", "retry", later)
    assert (code, out) == (0, f"{later}: due now\n"), err
    await until(lambda: delivered_to(world, "later@example.net"))

    # delete: gone, never delivered.
    code, out, err = await xrelay(world, "queue", "delete", drop)
    assert (code, out) == (0, f"{drop}: deleted\n"), err
    # bounce: the sender gets a DSN, the entry is kept under failed/.
    code, out, err = await xrelay(world, "queue", "bounce", back)
    assert (code, out) == (0, f"{back}: bounced to its sender\n"), err
    await until(lambda: delivered_to(world, "printer@sandbox.example"))
    dsn = delivered_to(world, "printer@sandbox.example")[0].data
    assert b"Returned to the sender by the relay's operator" in dsn
    assert b"back@example.net" in dsn

    out = await listing()
    assert drop not in out and later not in out
    assert f"{back}\tfailed\t" in out
    assert not delivered_to(world, "drop@example.net")

    # Mistakes: exit 1 for a problem, 2 for usage.
    code, out, err = await xrelay(world, "queue", "show", "20990101T000000.000000-1-000001")
    assert code == 1 and "no entry 20990101T000000.000000-1-000001 in the queue" in err
    code, out, err = await xrelay(world, "queue", "delete")
    assert code == 2 and "queue delete needs an entry id" in err
    code, out, err = await xrelay(world, "queue", "frobnicate", "x")
    assert code == 2


@pytest_twisted.ensureDeferred
async def test_send_test_and_accounts(world, daemons) -> None:
    daemons.append(await start_daemon(world))
    code, out, err = await xrelay(world, "send-test", "--to", "check@example.net",
                                  "--account", "sandbox")
    assert code == 0, err
    assert re.match(r"\S+: delivered via sandbox as <relay@sandbox.example>: 250 2\.6\.0 ",
                    out), out
    message = delivered_to(world, "check@example.net")[0]
    assert b"Subject: xrelay test message via account sandbox" in message.data

    code, out, err = await xrelay(world, "send-test", "--to", "check@example.net",
                                  "--account", "nope")
    assert code == 1 and "no account 'nope'; the accounts are: sandbox, boss" in err

    code, out, err = await xrelay(world, "accounts")
    assert code == 1  # boss has never signed in
    assert "# account states from the daemon" in out
    assert re.search(r"^sandbox\tok\tmicrosoft/client_credentials\trelay@sandbox.example",
                     out, re.M), out
    assert re.search(r"^boss\t(no token|needs sign-in)\tmicrosoft/auth_code\t", out, re.M), out


@pytest_twisted.ensureDeferred
async def test_login_with_a_device_code_resumes_the_daemon(world, daemons) -> None:
    # Device code sign-in is done by a public client (msal sends no secret).
    world.boss_app.public_client = True
    daemons.append(await start_daemon(world))
    output = bytearray()
    finished: defer.Deferred[int] = defer.Deferred()

    class Watch(protocol.ProcessProtocol):
        def outReceived(self, data: bytes) -> None:
            output.extend(data)

        def errReceived(self, data: bytes) -> None:
            output.extend(data)

        def processEnded(self, reason: Any) -> None:
            finished.callback(reason.value.exitCode)

    reactor.spawnProcess(Watch(), bin_path("xrelay"), [bin_path("xrelay"), "login", "boss"],
                         env=environment(world), path=str(world.tmp))
    await until(lambda: b"Code: " in output)
    text = output.decode()
    assert f"URL: {world.sandbox.authority}/devicelogin" in text
    code = re.search(r"^Code: (\S+)$", text, re.M).group(1)
    world.sandbox.identity.approve_device_code(code, BOSS)
    assert await finished == 0, output.decode()
    assert "Signed in: account boss is ok." in output.decode()

    # The daemon sees the stored tokens (it polls the cache) and reports the account ok.
    for _ in range(200):
        status, out, err = await xrelay(world, "accounts")
        # "refreshing" is usable too (exit 0) but not yet the state this waits for.
        if status == 0 and re.search(r"^boss\tok\t", out, re.M):
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    assert status == 0, out
    assert re.search(r"^boss\tok\t", out, re.M), out


@pytest_twisted.ensureDeferred
async def test_without_a_daemon_the_command_locks_the_spool(world, daemons) -> None:
    write_config(world, delegated=True, first_retry=600)
    world.sandbox.exchange.reject_recipient("later@example.net", "451 4.2.1 Mailbox temporarily unavailable")
    daemon = await start_daemon(world)
    daemons.append(daemon)
    entry = await smtp_send(world.smtp_port, "printer@sandbox.example", "later@example.net")
    for _ in range(300):
        code, out, err = await xrelay(world, "queue", "list")
        if "\tdeferred\t" in out:
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    await deferToThread(daemon.stop)
    assert not os.path.exists(world.state_dir / "control.sock")

    code, out, err = await xrelay(world, "queue", "list")
    assert code == 0 and f"{entry}\tdeferred\t" in out, err
    code, out, err = await xrelay(world, "accounts")
    assert code == 1 and "the relay is not running" in err
    code, out, err = await xrelay(world, "accounts", "--offline")
    assert "# account states from the token cache (--offline" in out

    # Somebody else holds the lock (a daemon that does not answer): refuse, no race.
    with SpoolLock(str(world.state_dir)):
        code, out, err = await xrelay(world, "queue", "delete", entry)
    assert code == 1 and "does not answer on its control socket" in err
    code, out, err = await xrelay(world, "queue", "delete", entry)
    assert (code, out) == (0, f"{entry}: deleted\n"), err
    assert not os.path.exists(world.state_dir / "spool" / "data" / f"{entry}.eml")
    code, out, err = await xrelay(world, "send-test", "--to", "x@example.net")
    assert code == 1 and "the relay is not running" in err


@pytest_twisted.ensureDeferred
async def test_control_socket_is_private(world, daemons) -> None:
    daemons.append(await start_daemon(world))
    sock = world.state_dir / "control.sock"
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    assert oct(os.stat(world.state_dir).st_mode & 0o777) == "0o700"
