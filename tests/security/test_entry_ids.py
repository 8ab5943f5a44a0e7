"""
One entry-id syntax, the spool's own, checked at every entry point: the `xrelay queue`
command (with and without a daemon), the control socket and the admin page's forms.
Anything else is refused with "not an entry id" before any file is touched, so a
crafted id cannot reach a file outside the spool (`../../x/planted`, an absolute
path), crash the daemon (a NUL) or name another entry in a roundabout way.
"""

from __future__ import annotations

import io
import json
import os
import socket
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.admin.conftest import start_relay, world  # noqa: F401
from tests.admin.test_web import Browser
from xrelay.operations.control import ControlClient, ControlRefusal, control_socket_path
from xrelay.spool import is_entry_id

REFUSED = "is not an entry id"


def planted(state_dir: Path) -> dict[Path, bytes]:
    """
    A record and message data outside the spool, where `../../x/planted` points from
    spool/queued and spool/data: what a path-accepting delete would remove.
    """
    folder = state_dir / "x"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"id": "../../x/planted", "sender": "a@example.com",
              "recipients": ["b@example.org"], "size": 10}
    files = {folder / "planted.json": json.dumps(record).encode(),
             folder / "planted.eml": b"Subject: planted\r\n\r\nx\r\n"}
    for path, content in files.items():
        path.write_bytes(content)
    return files


def crafted(state_dir: Path, real: str | None = None) -> list[str]:
    ids = [
        "../../x/planted",
        str(state_dir / "x" / "planted"),           # an absolute path
        "20260101T000000.000000-1-000001/../../../x/planted",
        "20260101T000000.000000-1-000001\x00",      # a NUL
        "x\x00../../planted",
        "*",
        "",
        ".",
        "..",
        "20260101T000000.000000-1-000001.json",
        "20260101T000000.000000-1-000001\n",
        "２０２６０１０１T000000.000000-1-000001",   # digits, but not ASCII ones
        "2" * 5000,
    ]
    if real:
        ids += [f"../queued/{real}", f"./{real}", f"{real}/", f" {real}"]
    return ids


def untouched(files: dict[Path, bytes]) -> None:
    for path, content in files.items():
        assert path.read_bytes() == content, f"{path} was touched"


def test_the_syntax() -> None:
    assert is_entry_id("20261201T232515.123456-4242-000001")
    for text in crafted(Path("/tmp")) + [None, 42, b"20261201T232515.123456-4242-000001"]:
        assert not is_entry_id(text), repr(text)


def xrelay(*argv: str) -> tuple[int, str, str]:
    from xrelay.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


async def spool_one(relay: Any) -> str:
    from xrelay.envelope import Envelope

    incoming = relay.spool.incoming(Envelope("printer@sandbox.example",
                                             ("someone@example.net",), account="sandbox"))
    incoming.write(b"Subject: real\r\n\r\nbody\r\n")
    return await incoming.commit()


def ask(state_dir: Path, op: str, **args: Any) -> str:
    """A request on the control socket; the daemon's refusal text."""
    try:
        ControlClient(str(state_dir)).request(op, **args)
    except ControlRefusal as e:
        return str(e)
    return "(accepted)"


def raw_request(state_dir: Path, payload: bytes) -> dict[str, Any]:
    """Bytes as a client of our own would never send them."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(control_socket_path(str(state_dir)))
        sock.sendall(payload + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


@pytest_twisted.ensureDeferred
async def test_control_socket_and_cli_refuse_crafted_ids(world) -> None:  # noqa: F811
    relay = start_relay(world)
    relay.delivery.stopService()  # keep the real entry queued
    real = await spool_one(relay)
    files = planted(world.state_dir)
    for entry_id in crafted(world.state_dir, real):
        for op in ("queue.show", "queue.retry", "queue.delete", "queue.bounce"):
            answer = await deferToThread(ask, world.state_dir, op, id=entry_id)
            assert REFUSED in answer, (op, entry_id, answer)
    # JSON that our client would not send: a NUL escape, a number, a list.
    for payload in (b'{"op": "queue.delete", "args": {"id": "..\\u0000/x"}}',
                    b'{"op": "queue.delete", "args": {"id": "../../x/planted"}}'):
        answer = await deferToThread(raw_request, world.state_dir, payload)
        assert answer["ok"] is False and REFUSED in answer["error"], answer
    for payload in (b'{"op": "queue.delete", "args": {"id": 7}}',
                    b'{"op": "queue.delete", "args": {"id": ["../../x/planted"]}}'):
        answer = await deferToThread(raw_request, world.state_dir, payload)
        assert answer["ok"] is False, answer
    # The installed command, through the daemon (argv cannot carry a NUL).
    for entry_id in [i for i in crafted(world.state_dir, real) if "\x00" not in i]:
        code, out, err = await deferToThread(
            xrelay, "queue", "delete", entry_id, "--config", str(world.config_path))
        if entry_id == "":
            assert code == 2  # "queue delete needs an entry id"
            continue
        assert code == 1 and REFUSED in err, (entry_id, code, out, err)
    untouched(files)
    assert relay.spool.get(real).state == "queued"  # still there, never reached

    await relay.stopService()
    world.relay = None
    # Without a daemon: the command works on the spool itself, same refusal.
    for entry_id in crafted(world.state_dir, real):
        for action in ("show", "retry", "delete", "bounce"):
            if entry_id == "":
                continue
            code, out, err = xrelay("queue", action, entry_id, "--config",
                                    str(world.config_path))
            assert code == 1 and REFUSED in err, (action, entry_id, code, err)
    untouched(files)
    code, out, err = xrelay("queue", "show", real, "--config", str(world.config_path))
    assert code == 0 and "Subject: real" in out


@pytest_twisted.ensureDeferred
async def test_admin_forms_refuse_crafted_ids(world) -> None:  # noqa: F811
    relay = start_relay(world)
    relay.delivery.stopService()
    real = await spool_one(relay)
    files = planted(world.state_dir)
    browser = Browser(world.admin_url)
    await browser.sign_in()
    for entry_id in crafted(world.state_dir, real):
        for action in ("retry", "delete"):
            token = await browser.csrf("/queue")
            response, _ = await browser.request("POST", f"/queue/{action}",
                                                {"id": entry_id, "csrf_token": token})
            assert response.code == 303, (action, entry_id)
            _, body = await browser.request("GET", "/queue")
            assert REFUSED in body, (action, entry_id)
    untouched(files)
    assert relay.spool.get(real).state == "queued"
    assert os.path.exists(relay.spool._data_path(real))
