"""
The DATA fast path (L{LineBuffer.plain_lines}) must store exactly what the line-by-line
path stores and find the end of data in exactly the same place, for any bytes split
into any packets: it is an optimisation, never a second set of rules.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from xrelay.inbound.lines import LineBuffer, data_line_bytes

LIMIT = 12


def receive(packets: list[bytes], fast: bool) -> tuple[bytes, bool, int]:
    """
    What the inbound protocol's DATA state does with these packets: the bytes stored
    (C{!} for an over-long line), whether the end of data was found, and how many bytes
    were left after it.
    """
    lines = LineBuffer(LIMIT)
    stored = []
    previous_crlf = True
    for packet in packets:
        lines.feed(packet)
        while True:
            if fast:
                block = lines.plain_lines()
                if block:
                    stored.append(block)
                    previous_crlf = True
                    continue
            line = lines.next()
            if line is None:
                break
            if line.overlong:
                stored.append(b"!")
            elif line.crlf and previous_crlf and line.content == b".":
                return b"".join(stored), True, lines.pending
            else:
                stored.append(data_line_bytes(line))
            previous_crlf = line.crlf
    return b"".join(stored), False, lines.pending


pieces = st.sampled_from([b"a", b"b", b".", b"\r", b"\n", b"\r\n", b".\r\n",
                          b"\r\n.\r\n", b"x" * 7, b"y" * 13])


@st.composite
def split_stream(draw: st.DrawFn) -> list[bytes]:
    data = b"".join(draw(st.lists(pieces, max_size=60)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    packets, previous = [], 0
    for cut in cuts + [len(data)]:
        packets.append(data[previous:cut])
        previous = cut
    return packets


@settings(max_examples=3000, deadline=None)
@given(split_stream())
def test_fast_path_stores_and_ends_exactly_like_line_by_line(packets: list[bytes]) -> None:
    assert receive(packets, fast=True) == receive(packets, fast=False)


def test_plain_lines_stop_before_the_first_line_that_needs_the_rules() -> None:
    lines = LineBuffer(100)
    lines.feed(b"one\r\ntwo\r\n..stuffed\r\nthree\r\n")
    assert lines.plain_lines() == b"one\r\ntwo\r\n"
    assert lines.plain_lines() == b""  # the stuffed line is the slow path's
    assert lines.next().content == b"..stuffed"
    assert lines.plain_lines() == b"three\r\n"


def test_lines_with_bare_line_ends_or_too_long_go_one_by_one() -> None:
    for data in [b"a\r\nb\nc\r\n", b"a\r\nb\rc\r\n", b"a\r\n" + b"z" * 100 + b"\r\n",
                 b"\n", b"z" * 100 + b"\r\n"]:
        lines = LineBuffer(100)
        lines.feed(data)
        assert lines.plain_lines() == b"", data
        assert lines.next() is not None
        assert lines.plain_lines() == b"", data  # not looked at again


def test_plain_lines_stop_at_the_end_of_data_and_partial_lines() -> None:
    for data, plain in [(b"a\r\n.\r\nMAIL FROM:<x>\r\n", b"a\r\n"),
                        (b"a\r\npartial", b"a\r\n"), (b"partial", b"")]:
        lines = LineBuffer(100)
        lines.feed(data)
        assert lines.plain_lines() == plain, data


def test_a_new_packet_is_looked_at_again() -> None:
    lines = LineBuffer(100)
    lines.feed(b"bare\n")
    assert lines.plain_lines() == b""
    assert lines.next().crlf is False
    lines.feed(b"plain\r\n")
    assert lines.plain_lines() == b"plain\r\n"
