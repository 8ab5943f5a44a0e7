"""
The disk reserve (C{server.min_free_space}) without a small file system: new mail is
refused at MAIL with 452 4.3.1 (and, should space run out between MAIL and DATA,
before the 354) while the free space reported is below it, the
delivery engine's own writes (bounces) are not, and mail is taken again as soon as
space returns.  The free space is the one thing faked here.
"""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.admin.conftest import world  # noqa: F401
from tests.conftest import free_port
from tests.delivery.delivery_harness import account
from xrelay.config import Config, ListenerConfig, ServerConfig
from xrelay.delivery import DeliveryEngine
from xrelay.delivery.testing import ScriptedTransport
from xrelay.diskspace import ReservingSpool, free_bytes
from xrelay.envelope import Envelope
from xrelay.spool import Spool, SpoolFull, run_inline


def test_reserve_refuses_new_mail_only(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    free = {"bytes": 50}
    guarded = ReservingSpool(spool, lambda: 100, free=lambda: free["bytes"])
    with pytest.raises(SpoolFull, match="below server.min_free_space"):
        guarded.incoming(Envelope("a@example.com", ("b@example.org",)))
    # The engine writes to the spool itself: a bounce still goes in.
    bounce = spool.incoming(Envelope("relay@example.com", ("a@example.com",)),
                            bounce_of="20260101T000000.000000-1-000001")
    bounce.write(b"Subject: Undelivered\r\n\r\nx\r\n")
    assert bounce.commit().result
    free["bytes"] = 500
    message = guarded.incoming(Envelope("a@example.com", ("b@example.org",)))
    message.write(b"Subject: ok\r\n\r\nx\r\n")
    assert message.commit().result
    # 0 turns the reserve off; the real free space is what statvfs says.
    assert ReservingSpool(spool, lambda: 0, free=lambda: 0).spool is spool
    assert free_bytes(str(tmp_path)) > 0


def send(port: int) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("scanner")
        code, text = client.mail("scanner@example.com")
        if code != 250:
            return code, text
        client.rcpt("a@example.org")
        try:
            return client.data(b"Subject: scan\r\n\r\nbody\r\n")
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error


@pytest_twisted.inlineCallbacks
def test_a_client_gets_452_at_mail(tmp_path: Path) -> Any:
    from twisted.internet import reactor

    from xrelay.inbound import InboundService

    port = free_port()
    cfg = Config(server=ServerConfig(
        listen=(ListenerConfig(f"tcp:{port}:interface=127.0.0.1"),),
        hostname="relay.test", state_dir=str(tmp_path)), accounts=(account(),))
    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    free = {"bytes": 10}
    transport = ScriptedTransport()
    engine = DeliveryEngine(cfg, spool, {"main": transport}, reactor=reactor)
    inbound = InboundService(cfg, ReservingSpool(spool, lambda: 104857600,
                                                 free=lambda: free["bytes"]),
                             engine, reactor=reactor)
    engine.startService()
    inbound.startService()
    try:
        yield inbound.when_listening()
        code, text = yield threads.deferToThread(send, port)
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
        assert list(spool.entries()) == []
        free["bytes"] = 200 * 1024 * 1024
        code, _ = yield threads.deferToThread(send, port)
        assert code == 250

        def space_goes_after_mail() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo("scanner")
                assert client.mail("scanner@example.com")[0] == 250
                assert client.rcpt("a@example.org")[0] == 250
                free["bytes"] = 10
                try:
                    return client.data(b"Subject: scan\r\n\r\nbody\r\n")
                except smtplib.SMTPDataError as e:  # at DATA, before the 354
                    return e.smtp_code, e.smtp_error
        code, text = yield threads.deferToThread(space_goes_after_mail)
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
    finally:
        yield inbound.stopService()
        yield engine.stopService()


def test_the_relay_puts_its_listeners_behind_the_reserve(world) -> None:  # noqa: F811
    from tests.admin.conftest import start_relay

    relay = start_relay(world)
    assert isinstance(relay.inbound.spool, ReservingSpool)
    assert relay.inbound.spool.spool is relay.spool
    assert relay.inbound.spool._minimum() == 104857600  # the documented default
    import attrs

    # A reload changes it for the next message: the reserve asks the live config.
    relay.config = attrs.evolve(relay.config, server=attrs.evolve(
        relay.config.server, min_free_space=1))
    assert relay.inbound.spool._minimum() == 1


def test_the_reserve_wraps_any_spool(tmp_path) -> None:
    """ReservingSpool needs nothing of its spool beyond ISpool (here the memory one)."""
    from zope.interface.verify import verifyObject

    from xrelay.interfaces import ISpool
    from xrelay.testing import MemorySpool

    inner = MemorySpool(directory=str(tmp_path))
    free = [10]
    reserving = ReservingSpool(inner, lambda: 100, free=lambda: free[0])
    assert verifyObject(ISpool, reserving)
    with pytest.raises(SpoolFull):
        reserving.incoming(ENVELOPE_FOR_RESERVE)
    free[0] = 1000
    message = reserving.incoming(ENVELOPE_FOR_RESERVE)
    message.write(b"Subject: x\r\n\r\nx\r\n")
    box: list = []
    message.commit().addCallback(box.append)
    assert reserving.get(box[0]).state == "queued" and inner.counts()["queued"] == 1


ENVELOPE_FOR_RESERVE = Envelope("scanner@example.com", ("a@example.org",))


def test_free_space_is_measured_at_most_every_100_ms_far_from_the_reserve(
        tmp_path: Path) -> None:
    from xrelay import diskspace

    spool = Spool(str(tmp_path), run_blocking=run_inline)
    now = [1000.0]
    measured: list[int] = []
    free = {"bytes": 10_000}

    def measure() -> int:
        measured.append(free["bytes"])
        return free["bytes"]

    guarded = ReservingSpool(spool, lambda: 100, free=measure, clock=lambda: now[0])
    for _ in range(50):  # a burst: MAIL and DATA of 25 messages within 100 ms
        assert guarded.shortfall() is None
        now[0] += diskspace.MEASURE_EVERY / 60
    assert len(measured) == 1
    now[0] += diskspace.MEASURE_EVERY
    free["bytes"] = 250  # near the reserve: measured at every question from now on
    assert guarded.shortfall() is None and len(measured) == 2
    free["bytes"] = 50
    assert guarded.shortfall() is not None and len(measured) == 3
