"""
`xrelay queue bounce` writes its bounce through the same function as the delivery
engine (L{xrelay.delivery.bounce.spool_bounce}), with or without a daemon, and over
any L{ISpool}: no engine is built to make one.
"""

from __future__ import annotations

import email
from typing import Any

import pytest

from tests.delivery.delivery_harness import MESSAGE, config
from xrelay.delivery import engine as engine_module
from xrelay.envelope import Envelope
from xrelay.lifecycle import FAILED, QUEUED
from xrelay.operations.queue import OPERATOR_BOUNCE, QueueOperations
from xrelay.spool import Spool, run_inline
from xrelay.testing import MemorySpool


@pytest.fixture(params=["disk", "memory"])
def spool(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "disk":
        return Spool(str(tmp_path / "spool"), run_blocking=run_inline)
    return MemorySpool(directory=str(tmp_path / "memory"))


def done(coroutine: Any) -> Any:
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise AssertionError("the operation did not finish at once")


def test_an_offline_bounce_builds_no_engine(spool: Any, tmp_path: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def no_engine(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a DeliveryEngine was built to write a bounce")
    monkeypatch.setattr(engine_module.DeliveryEngine, "__init__", no_engine)
    cfg = config(bounce_to="postmaster@example.com")
    cfg = type(cfg)(server=type(cfg.server)(hostname="relay.example.com",
                                            state_dir=str(tmp_path)),
                    accounts=cfg.accounts, delivery=cfg.delivery)
    message = spool.incoming(Envelope("scanner@example.com", ("a@example.org",),
                                      account="main", received_at=1.0))
    message.write(MESSAGE)
    box: list[str] = []
    message.commit().addCallback(box.append)
    [entry_id] = box
    ops = QueueOperations(spool, cfg, None)

    moved = done(ops.bounce(entry_id).__await__())

    assert moved.state == FAILED and moved.last_reply == OPERATOR_BOUNCE
    [bounce] = list(spool.entries(QUEUED))  # waits for the daemon to send it
    assert bounce.bounce_of == entry_id
    assert bounce.sender == "relay-main@example.com"  # the account's own mailbox
    assert bounce.recipients == ("scanner@example.com", "postmaster@example.com")
    report = email.message_from_bytes(spool.read_data(bounce.entry_id))
    assert report.get_content_type() == "multipart/report"
    assert "Returned to the sender by the relay's operator" in spool.read_data(
        bounce.entry_id).decode()
