"""
The pure parts of delivery: retry arithmetic, the From rewrite, the bounce format.
"""

from __future__ import annotations

import email

from xrelay.config import DeliveryConfig
from xrelay.delivery.bounce import FailedRecipient, build_bounce, read_original_headers
from xrelay.delivery.retry import RetryPolicy
from xrelay.delivery.rewrite import rewrite_from
from xrelay.envelope import Reply


def test_retry_doubling_capped_and_jittered() -> None:
    policy = RetryPolicy.from_config(DeliveryConfig(first_retry=60, max_retry_interval=3600,
                                                    max_age=432000), random=lambda: 0.5)
    assert [policy.delay(n) for n in range(1, 9)] == [60, 120, 240, 480, 960, 1920,
                                                       3600, 3600]
    assert policy.delay(10_000) == 3600  # no overflow for very old entries
    assert policy.delay(1, retry_after=900) == 900
    low = RetryPolicy(60, 3600, 100, random=lambda: 0.0)
    high = RetryPolicy(60, 3600, 100, random=lambda: 0.99999)
    assert low.delay(2) == 96 and 143.99 < high.delay(2) < 144
    assert not low.expired(1000.0, 1099.0) and low.expired(1000.0, 1100.0)


def test_rewrite_keeps_folded_from_in_reply_to(tmp_path) -> None:
    source = tmp_path / "in.eml"
    source.write_bytes(b"Subject: x\r\nFrom: \"Printer, 3rd floor\"\r\n <printer@example.com>"
                       b"\r\nTo: a@example.org\r\n\r\nFrom: not a header\r\n")
    size = rewrite_from(str(source), str(tmp_path / "out.eml"), "relay@example.com",
                        "printer@example.com")
    out = (tmp_path / "out.eml").read_bytes()
    assert out == (b"Subject: x\r\nFrom: relay@example.com\r\nReply-To: \"Printer, 3rd "
                   b"floor\"\r\n <printer@example.com>\r\nTo: a@example.org\r\n\r\n"
                   b"From: not a header\r\n")
    assert size == len(out)


def test_rewrite_existing_reply_to_and_missing_from(tmp_path) -> None:
    source = tmp_path / "in.eml"
    source.write_bytes(b"From: a@example.com\r\nReply-To: desk@example.com\r\n\r\nbody\r\n")
    rewrite_from(str(source), str(tmp_path / "out.eml"), "relay@example.com", "a@example.com")
    assert (tmp_path / "out.eml").read_bytes() == (
        b"From: relay@example.com\r\nReply-To: desk@example.com\r\n\r\nbody\r\n")
    source.write_bytes(b"Subject: none\r\n\r\nbody\r\n")
    rewrite_from(str(source), str(tmp_path / "out.eml"), "relay@example.com", "a@example.com")
    assert (tmp_path / "out.eml").read_bytes() == (
        b"Subject: none\r\nFrom: relay@example.com\r\nReply-To: a@example.com\r\n\r\nbody\r\n")


def test_bounce_parses_and_carries_multiline_reply(tmp_path) -> None:
    source = tmp_path / "m.eml"
    source.write_bytes(b"Subject: Rechnung \xc3\xa4\r\nFrom: erp@example.com\r\n\r\nbody\r\n")
    headers = read_original_headers(str(source))
    assert headers == "Subject: Rechnung \u00e4\nFrom: erp@example.com\n"
    data = build_bounce(
        reporting_mta="relay.example.com", from_address="relay@example.com",
        to=["erp@example.com"], original_sender="erp@example.com",
        original_headers=headers,
        failed=[FailedRecipient("x@example.org", Reply(550, "5.7.1 first line\nsecond")),
                FailedRecipient("y@example.org", Reply(452, "4.2.2 full"), expired=True)],
        remote_mta="smtp.office365.com", arrival_date=1_700_000_000, now=1_700_000_100)
    dsn = email.message_from_bytes(data)
    blocks = dsn.get_payload()[1].get_payload()
    assert blocks[0]["Arrival-Date"] == "Tue, 14 Nov 2023 22:13:20 -0000"
    assert [b["Status"] for b in blocks[1:]] == ["5.7.1", "4.4.7"]
    assert blocks[1]["Diagnostic-Code"] == "smtp; 550 5.7.1 first line second"
    assert blocks[1]["Remote-MTA"] == "dns; smtp.office365.com"
    assert "Rechnung \u00e4" in dsn.get_payload()[2].get_payload(decode=True).decode()
    assert dsn["To"] == "erp@example.com"
