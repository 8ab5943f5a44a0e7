"""
Dot-stuffing of streamed message data: every line that starts with "." is stuffed,
wherever the read chunks happen to split the file, and nothing in the content can end
the data early.
"""

from __future__ import annotations

import io

import pytest
from twisted.internet.testing import StringTransport

from xrelay.transport.data import DataSender, DotStuffer


def unstuff(data: bytes) -> tuple[bytes, bytes]:
    """A strict RFC 5321 receiver: the content up to the first CRLF.CRLF, and the rest."""
    assert data.startswith(b".\r\n") is False or data == b".\r\n"
    lines, rest = [], b""
    buf = b"\r\n" + data
    end = buf.find(b"\r\n.\r\n")
    assert end != -1, "no end of data"
    content, rest = buf[2:end + 2], buf[end + 5:]
    for line in content.split(b"\r\n")[:-1]:
        lines.append(line[1:] if line.startswith(b".") else line)
    return b"".join(line + b"\r\n" for line in lines), rest


def stream(data: bytes, chunk_size: int) -> bytes:
    transport = StringTransport()
    sender = DataSender(io.BytesIO(data), transport, chunk_size=chunk_size)
    d = sender.start()
    while transport.producer is not None:
        transport.producer.resumeProducing()
    assert d.called
    return transport.value()


def test_stuffs_lines_starting_with_dot() -> None:
    s = DotStuffer()
    assert s.encode(b".a\r\nb\r\n.\r\n..c\r\n") == b"..a\r\nb\r\n..\r\n...c\r\n"
    assert s.finish() == b".\r\n"


def test_dot_at_chunk_boundary_is_stuffed() -> None:
    """The case stock twisted.mail gets wrong: "." first in a chunk, CRLF in the last."""
    s = DotStuffer()
    assert s.encode(b"x\r\n") + s.encode(b".\r\n") == b"x\r\n..\r\n"
    s = DotStuffer()
    assert s.encode(b"x\r") + s.encode(b"\n.\r\n") == b"x\r\n..\r\n"
    s = DotStuffer()
    assert s.encode(b"x\r") + s.encode(b"\n") + s.encode(b".") == b"x\r\n.."


def test_bare_line_feeds_pass_through_and_cannot_end_data() -> None:
    s = DotStuffer()
    out = s.encode(b"a\n.\nb\r.\rc\n.\r\n") + s.finish()
    assert out == b"a\n.\nb\r.\rc\n.\r\n.\r\n"
    assert unstuff(out) == (b"a\n.\nb\r.\rc\n.\r\n", b"")


def test_missing_final_crlf_is_added() -> None:
    s = DotStuffer()
    assert s.encode(b"no newline") + s.finish() == b"no newline\r\n.\r\n"
    s = DotStuffer()
    assert s.encode(b"ends in cr\r") + s.finish() == b"ends in cr\r\r\n.\r\n"
    assert DotStuffer().finish() == b".\r\n"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 64, 65536])
def test_round_trip_at_every_chunk_size(chunk_size: int) -> None:
    """
    A message built to put a "." line (and CRLF.CRLF) at every offset: whatever the
    chunking, a strict receiver gets back exactly the file, as one message.
    """
    body = b"".join(
        b"x" * n + b"\r\n.\r\n" + b".." + b"\r\n" + b"\n.\n" + b"\r.\r\n" for n in range(12)
    )
    data = b"Subject: t\r\n\r\n" + body + b".\r\nQUIT\r\n"
    out = stream(data, chunk_size)
    assert out.count(b"\r\n.\r\n") == 1 and out.endswith(b"\r\n.\r\n")
    assert unstuff(out) == (data, b"")
