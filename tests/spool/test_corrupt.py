"""
One unreadable file never stops the relay: every corrupt-entry kind is set aside in
C{spool/corrupt/} (with a log line naming the file and the reason), the good messages
are delivered, and C{xrelay queue list --state corrupt} / C{queue show} tell the
operator what is known.  An operator's folder is left alone with a warning.  (Data
without a record and interrupted commits are not corruption: tests/spool/test_torn.py.)
"""

from __future__ import annotations

import io
import json
import os
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import task
from twisted.logger import formatEvent, globalLogPublisher

from tests.admin.conftest import world  # noqa: F401
from tests.delivery.delivery_harness import MESSAGE, START, config
from xrelay.delivery import DeliveryEngine
from xrelay.delivery.testing import ScriptedTransport
from xrelay.envelope import Envelope
from xrelay.spool import (ACTIVE, CORRUPT, DEFERRED, FAILED, LIFECYCLE, QUEUED, Spool,
                          TransitionRefused, run_inline)

BAD = "20260101T000000.000000-1-000099"


def receive(spool: Spool, subject: str) -> str:
    incoming = spool.incoming(Envelope("scanner@example.com", ("a@example.org",),
                                       account="main", received_at=START))
    incoming.write(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    return incoming.commit().result


def restart_after(directory: Path, damage: Callable[[Path], None]
                  ) -> tuple[list[str], Spool, ScriptedTransport, DeliveryEngine]:
    """
    Two good messages spooled, C{damage} done to the spool's folder, then a restart:
    the spool recovers and the engine runs once.  Returns the good ids, the new spool,
    what the transport was sent and the engine (still running: the caller stops it).
    """
    first = Spool(str(directory), run_blocking=run_inline)
    good = [receive(first, "one"), receive(first, "two")]
    damage(directory)
    clock = task.Clock()
    clock.advance(START)
    spool = Spool(str(directory), run_blocking=run_inline)
    transport = ScriptedTransport()
    engine = DeliveryEngine(config(), spool, {"main": transport}, clock=clock,
                            random=lambda: 0.5)
    engine.startService()
    clock.advance(1)
    return good, spool, transport, engine


def record(entry_id: str, **changes: Any) -> dict[str, Any]:
    base = {"id": entry_id, "sender": "scanner@example.com", "recipients":
            ["a@example.org"], "size": 24, "account": "main", "received_at": START}
    base.update(changes)
    return base


def plant_json(spool: Path, payload: bytes, state: str = QUEUED, data: bytes = MESSAGE,
               entry_id: str = BAD) -> None:
    (spool / state / f"{entry_id}.json").write_bytes(payload)
    if data is not None:
        (spool / "data" / f"{entry_id}.eml").write_bytes(data)


def truncated(spool: Path) -> None:
    plant_json(spool, json.dumps(record(BAD)).encode()[:30])


def garbage(spool: Path, entry_id: str = BAD) -> None:
    plant_json(spool, b"\x00\xff\xfe not json at all", state=DEFERRED, entry_id=entry_id)


def missing_keys(spool: Path) -> None:
    plant_json(spool, json.dumps({"id": BAD, "sender": "x@example.com"}).encode())


def a_list(spool: Path) -> None:
    plant_json(spool, json.dumps([record(BAD)]).encode())


def a_folder(spool: Path) -> None:
    (spool / QUEUED / f"{BAD}.json").mkdir()
    (spool / "data" / f"{BAD}.eml").write_bytes(MESSAGE)


def zero_bytes(spool: Path) -> None:
    plant_json(spool, json.dumps(record(BAD)).encode(), data=b"")


def id_mismatch(spool: Path) -> None:
    plant_json(spool, json.dumps(record("20260101T000000.000000-1-000777")).encode())


def no_data(spool: Path) -> None:
    plant_json(spool, json.dumps(record(BAD)).encode(), state=ACTIVE, data=None)


def bad_reply(spool: Path) -> None:
    plant_json(spool, json.dumps(record(BAD, last_reply="451 oops")).encode(),
               state=DEFERRED)


def committed_without_data(spool: Path) -> None:
    """A complete record of a commit whose data file is gone (lost since, not torn)."""
    import zlib

    from xrelay.spool.record import encode_record

    plant_json(spool, encode_record(record(BAD, size=len(MESSAGE)), len(MESSAGE),
                                    zlib.crc32(MESSAGE)), data=None)


def bad_checksum(spool: Path) -> None:
    from xrelay.spool.record import encode_record

    raw = encode_record(record(BAD, size=len(MESSAGE)))
    plant_json(spool, raw.replace(b"scanner@", b"scannex@"))  # same length, other bytes


KINDS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated JSON": (truncated, "not JSON"),
    "garbage": (garbage, "not JSON"),
    "missing keys": (missing_keys, "the record has no 'recipients'"),
    "a list": (a_list, "the record is a JSON list, not an object"),
    "a folder named *.json": (a_folder, "a folder, not a record"),
    "zero-byte data": (zero_bytes, "its message data is empty (zero bytes)"),
    "id differs from file name": (id_mismatch, "the record's id "
                                  "'20260101T000000.000000-1-000777' differs from its "
                                  "file name"),
    "record without data": (no_data, "its message data is missing"),
    "mistyped field": (bad_reply, "the record does not parse (TypeError"),
    "committed record without data": (committed_without_data,
                                      "its message data is missing"),
    "checksum differs": (bad_checksum, "the record's checksum does not match its "
                         "contents"),
}


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "xrelay.toml"
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret\n")
    os.chmod(secret, 0o600)
    path.write_text(f"""
[server]
listen = ["tcp:2525:interface=127.0.0.1"]
hostname = "relay.test"
state_dir = "{tmp_path / 'state'}"

[[accounts]]
name = "main"
provider = "microsoft"
user = "relay@example.com"
tenant = "example.onmicrosoft.com"
client_id = "cid"
client_secret_file = "secret.txt"
senders = ["*@example.com"]
""")
    return path


def xrelay(*argv: str) -> tuple[int, str, str]:
    """The `xrelay` command in this process (no daemon: it works on the spool)."""
    from xrelay.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def log_lines():
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) or "")
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_corrupt_kind_is_set_aside_and_the_rest_delivered(
        tmp_path: Path, kind: str, log_lines: list[str]) -> None:
    plant, reason = KINDS[kind]
    directory = tmp_path / "state" / "spool"
    # A restart: the spool recovers, the engine starts and delivers the good ones.
    good, spool, transport, engine = restart_after(directory, plant)
    assert sorted(s.message.entry_id for s in transport.sent) == good
    assert spool.counts()[CORRUPT] == 1
    assert [e.entry_id for e in spool.entries(QUEUED)] == []
    leftovers = os.listdir(directory / CORRUPT)
    assert leftovers, "nothing was set aside"
    assert not (directory / "data" / f"{BAD}.eml").exists()  # moved, not deleted
    text = "\n".join(log_lines)
    assert re.search(rf"set aside .*{re.escape(BAD)}.*: {re.escape(reason)}", text), text

    cfg = write_config(tmp_path)
    code, out, err = xrelay("queue", "list", "--state", "corrupt", "--config", str(cfg))
    assert code == 0, err
    assert out.startswith(f"{BAD}\tcorrupt\t"), out
    assert reason in out and out.endswith("# 1 entries\n")
    code, out, err = xrelay("queue", "show", BAD, "--config", str(cfg))
    assert code == 0, err
    assert "state: corrupt" in out and f"problem: {reason}" in out
    # It is never delivered from there, and cannot be retried; the operator deletes it.
    code, out, err = xrelay("queue", "retry", BAD, "--config", str(cfg))
    assert code == 1 and "was set aside as corrupt" in err
    code, out, err = xrelay("queue", "delete", BAD, "--config", str(cfg))
    assert (code, out) == (0, f"{BAD}: deleted\n"), err
    assert [n for n in os.listdir(directory / CORRUPT) if n.startswith(BAD)] == []
    engine.stopService()


def test_a_reader_sets_aside_what_turned_bad_while_running(tmp_path: Path,
                                                          log_lines: list[str]) -> None:
    """Not only start-up: `queue list` meets a broken record and still answers."""
    directory = tmp_path / "state" / "spool"
    spool = Spool(str(directory), run_blocking=run_inline)
    spool.recover()
    good = receive(spool, "fine")
    truncated(directory)
    cfg = write_config(tmp_path)
    code, out, err = xrelay("queue", "list", "--config", str(cfg))
    assert code == 0, err
    assert re.search(rf"^{re.escape(good)}\tqueued\t", out, re.M)
    assert re.search(rf"^{re.escape(BAD)}\tcorrupt\t.*problem: not JSON \(was in "
                     r"queued/\)$", out, re.M), out
    assert spool.get(good).state == QUEUED
    assert "set aside" in "\n".join(log_lines)


def test_unknown_folders_are_left_alone_with_a_warning(tmp_path: Path,
                                                       log_lines: list[str]) -> None:
    directory = tmp_path / "spool"
    Spool(str(directory), run_blocking=run_inline)
    hold = directory / "hold"
    hold.mkdir()
    (hold / f"{BAD}.json").write_text(json.dumps(record(BAD)))
    Spool(str(directory), run_blocking=run_inline).recover()
    assert os.listdir(hold) == [f"{BAD}.json"]
    assert any(f"{hold} is not part of the spool" in line and "left alone" in line
               for line in log_lines), log_lines


def test_the_lifecycle_table_is_enforced(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    entry = spool.get(receive(spool, "x"))
    assert FAILED not in LIFECYCLE[FAILED] and QUEUED not in LIFECYCLE[FAILED]
    failed = spool.move(entry, FAILED).result
    with pytest.raises(TransitionRefused, match="no transition from failed to queued"):
        spool.move(failed, QUEUED)
    with pytest.raises(TransitionRefused):
        spool.move(failed, ACTIVE)
    assert spool.get(entry.entry_id).state == FAILED  # nothing moved


@pytest_twisted.ensureDeferred
async def test_the_admin_page_and_control_socket_set_aside_and_show(world) -> None:  # noqa: F811
    """The daemon's readers: a record that turns bad under a running relay."""
    from twisted.internet.threads import deferToThread

    from tests.admin.conftest import start_relay
    from tests.admin.test_web import Browser
    from xrelay.operations.control import ControlClient

    relay = start_relay(world)
    relay.delivery.stopService()  # keep the good entry queued
    incoming = relay.spool.incoming(Envelope("printer@sandbox.example",
                                             ("someone@example.net",), account="sandbox"))
    incoming.write(b"Subject: fine\r\n\r\nbody\r\n")
    good = await incoming.commit()
    directory = Path(relay.spool.directory)
    a_list(directory)
    browser = Browser(world.admin_url)
    await browser.sign_in()
    response, body = await browser.request("GET", "/queue")
    assert response.code == 200
    assert good in body and f'id="entry-state-{BAD}" class="bad">corrupt<' in body
    assert "the record is a JSON list, not an object (was in queued/)" in body
    # Another one, for the control socket; and one more of the same name.
    other = "20260101T000000.000000-1-000098"
    garbage(directory, other)
    listing = await deferToThread(ControlClient(str(world.state_dir)).request,
                                  "queue.list")
    assert [(e["id"], e["state"], e["problem"]) for e in listing] == [
        (good, "queued", None),
        (other, "corrupt", "not JSON (was in deferred/)"),
        (BAD, "corrupt", "the record is a JSON list, not an object (was in queued/)")]
    a_list(directory)
    await deferToThread(ControlClient(str(world.state_dir)).request, "queue.list")
    listing = await deferToThread(ControlClient(str(world.state_dir)).request,
                                  "queue.list", state="corrupt")
    assert [e["id"] for e in listing] == [other, BAD, f"{BAD}~1"]
    assert sorted(os.listdir(directory / CORRUPT)) == sorted(
        f"{stem}{suffix}" for stem in (other, BAD, f"{BAD}~1")
        for suffix in (".json", ".eml", ".reason"))
