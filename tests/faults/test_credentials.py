"""
Credentials, with a real relay: an empty (or whitespace-only) client secret file, as an
in-place rewrite leaves it for an instant, is refused locally with one line and the
token in hand keeps the mail flowing; an identity-platform answer that is not JSON (cut
short, a fragment of a real token in it) costs one line per try, with neither the
fragment nor a traceback in the log.
"""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.faults.conftest import World, assert_clean


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("printer@example.com", ["client@example.net"],
                        f"Subject: {subject}\r\n\r\nhello\r\n".encode())


@pytest_twisted.inlineCallbacks
def wait_for_log(relay, text: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while text not in relay.log():
        assert time.monotonic() < deadline, f"no {text!r} in:\n{relay.log()}"
        yield deferLater(reactor, 0.2, lambda: None)


def own_secret_file(world: World, tmp_path: Path) -> Path:
    """The sandbox app's client secret in a file of the test's own (0600), configured:
    the test may then empty it, rewrite it or put a folder in its place."""
    secret = tmp_path / "secret.txt"
    secret.write_text(Path(world.sandbox.default_account()["client_secret_file"])
                      .read_text())
    secret.chmod(0o600)
    world.write_config(client_secret_file=str(secret))
    return secret


@pytest.mark.parametrize("content", ["", "  \n\n"], ids=["empty", "whitespace"])
@pytest_twisted.inlineCallbacks
def test_an_empty_secret_is_refused_locally_and_the_token_kept(
        world: World, tmp_path: Path, content: str) -> None:
    secret = own_secret_file(world, tmp_path)
    relay = world.start()
    yield world.listening(relay)
    yield deferToThread(send, world.port, "before")
    yield world.delivered(1)
    asked = len(world.sandbox.identity.requests)
    with open(secret, "w") as f:  # rewritten in place: empty for a moment
        f.write(content)
    yield wait_for_log(relay, "is empty (being rewritten?)")
    yield deferToThread(send, world.port, "during")
    subjects = yield world.delivered(2)
    assert subjects == ["before", "during"]
    # Nothing was sent to the identity platform with the empty secret.
    assert len(world.sandbox.identity.requests) == asked
    yield world.stop(relay)
    log = relay.log()
    assert_clean(log)
    assert log.count("is empty (being rewritten?)") == 1


@pytest_twisted.inlineCallbacks
def test_an_answer_that_is_not_json_leaves_no_fragment_and_no_traceback(
        world: World) -> None:
    world.sandbox.identity.cut_next(2)
    world.queue_mail(1, tag="after two cut answers")
    relay = world.start()
    yield world.listening(relay)
    subjects = yield world.delivered(1, timeout=120)
    assert subjects == ["after two cut answers 0"]
    yield world.stop(relay)
    log = relay.log()
    assert_clean(log)
    stderr = (world.tmp_path / "stderr.txt").read_text()
    # One line per try (the message's own deferral names the reason too).
    tries = [line for line in log.splitlines()
             if "#warn] No token for account sandbox" in line and "not valid JSON" in line]
    assert len(tries) == 2, log
    for text in (log, stderr):
        assert "access_token" not in text and "eyJ" not in text, text
        assert "Traceback" not in text, text


@pytest_twisted.inlineCallbacks
def test_a_folder_where_the_secret_file_was_keeps_the_token(world: World,
                                                            tmp_path: Path) -> None:
    secret = own_secret_file(world, tmp_path)
    relay = world.start()
    yield world.listening(relay)
    yield deferToThread(send, world.port, "before")
    yield world.delivered(1)
    secret.unlink()
    secret.mkdir()  # restored from a backup the wrong way
    yield wait_for_log(relay, f"cannot read {secret} (Is a directory)")
    yield deferToThread(send, world.port, "during")
    subjects = yield world.delivered(2)
    assert subjects == ["before", "during"]
    yield world.stop(relay)
    assert_clean(relay.log())
