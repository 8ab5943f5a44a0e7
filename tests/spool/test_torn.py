"""
What a crash leaves of a commit that never finished is detected by its length and
checksum, never delivered, and removed with an info line, not set aside as corruption:
a record cut short, an empty record with its data, data shorter than or different from
what the record's check line says, data without a record.  Each is written by hand
here, as a crash (or a power cut) would leave it, next to good entries.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from tests.delivery.delivery_harness import START
from tests.spool.test_corrupt import receive, restart_after
from xrelay.envelope import Envelope
from xrelay.spool import CORRUPT, QUEUED, Spool, SpoolEntry, run_inline
from xrelay.spool.record import encode_record, split_record

TORN = "20260101T000000.000000-1-000042"
BODY = b"Subject: torn\r\n\r\n" + b"a line of the message\r\n" * 40


def committed_record(data: bytes = BODY) -> bytes:
    """The record a commit of BODY writes (check line with the data's size and CRC)."""
    import zlib

    entry = SpoolEntry.received(TORN, Envelope("scanner@example.com", ("a@example.org",),
                                               account="main", received_at=START),
                                len(data), "unused")
    return encode_record(entry.to_json(), len(data), zlib.crc32(data))


def plant(spool: Path, record: bytes | None, data: bytes | None) -> None:
    if record is not None:
        (spool / QUEUED / f"{TORN}.json").write_bytes(record)
    if data is not None:
        (spool / "data" / f"{TORN}.eml").write_bytes(data)


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "record cut short": (lambda s: plant(s, committed_record()[:-30], BODY),
                         "the record is cut short"),
    "record cut inside its check line": (lambda s: plant(s, committed_record()[:12], BODY),
                                         "cut short inside its check line"),
    "empty record, data written": (lambda s: plant(s, b"", BODY), "empty record"),
    "data cut short": (lambda s: plant(s, committed_record(), BODY[:100]),
                       f"its message data is 100 bytes, the commit wrote {len(BODY)}"),
    "data never written": (lambda s: plant(s, committed_record(), b""),
                           f"its message data is 0 bytes, the commit wrote {len(BODY)}"),
    "data with other bytes": (lambda s: plant(s, committed_record(),
                                              BODY.replace(b"line", b"LINE")),
                              "differs from what the commit wrote"),
    "data without a record": (lambda s: plant(s, None, BODY),
                              "message data without a record"),
}


@pytest.fixture
def log_lines():
    lines: list[tuple[str, str]] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append((event["log_level"].name, formatEvent(event) or ""))
    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.mark.parametrize("case", list(CASES))
def test_an_interrupted_commit_is_removed_never_delivered_never_corrupt(
        tmp_path: Path, case: str, log_lines: list[tuple[str, str]]) -> None:
    make, reason = CASES[case]
    directory = tmp_path / "spool"
    good, _, transport, engine = restart_after(directory, make)
    engine.stopService()
    assert sorted(s.message.entry_id for s in transport.sent) == good  # never the torn one
    assert os.listdir(directory / CORRUPT) == []
    assert not (directory / QUEUED / f"{TORN}.json").exists()
    assert not (directory / "data" / f"{TORN}.eml").exists()
    mine = [(level, text) for level, text in log_lines if TORN in text]
    assert len(mine) == 1 and mine[0][0] == "info", log_lines
    assert reason in mine[0][1]
    assert re.search(r"never acknowledged|owed to nobody", mine[0][1])


def test_every_record_the_spool_writes_carries_its_check_line(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), run_blocking=run_inline)
    entry_id = receive(spool, "checked")
    with open(tmp_path / QUEUED / f"{entry_id}.json", "rb") as f:
        raw = f.read()
    body, figures = split_record(raw)
    assert figures["length"] == len(body) and figures["data_size"] == len(
        spool.read_data(entry_id))
    import json

    assert json.loads(body)["id"] == entry_id
    moved = spool.move(spool.get(entry_id), "deferred", attempts=1).result
    with open(tmp_path / "deferred" / f"{entry_id}.json", "rb") as f:
        body, figures = split_record(f.read())
    assert "data_size" not in figures and json.loads(body)["attempts"] == 1
    assert spool.get(entry_id) == moved


def test_an_unused_spare_pair_is_removed_quietly(tmp_path: Path,
                                                 log_lines: list[tuple[str, str]]) -> None:
    directory = tmp_path / "spool"
    Spool(str(directory), run_blocking=run_inline)
    plant(directory, b"", b"")
    Spool(str(directory), run_blocking=run_inline).recover()
    assert os.listdir(directory / QUEUED) == [] and os.listdir(directory / "data") == []
    assert [text for _, text in log_lines if TORN in text] == []
