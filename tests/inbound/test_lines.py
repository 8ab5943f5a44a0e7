"""
The bounded line splitter and the DATA line rules, without sockets.
"""

from __future__ import annotations

import pytest

from xrelay.inbound.lines import Line, LineBuffer, data_line_bytes
from xrelay.inbound.received import protocol_keyword, received_header


def lines_of(buffer: LineBuffer) -> list[Line]:
    out = []
    while (line := buffer.next()) is not None:
        out.append(line)
    return out


def test_crlf_and_bare_lf_lines_are_told_apart() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"one\r\ntwo\nthree\r")
    assert lines_of(buffer) == [Line(b"one", True), Line(b"two", False)]
    buffer.feed(b"\nfour")
    assert lines_of(buffer) == [Line(b"three", True)]
    assert buffer.pending == 4


def test_line_split_across_packets_one_byte_at_a_time() -> None:
    buffer = LineBuffer(100)
    got = []
    for byte in b"EHLO a\r\nNOOP\r\n":
        buffer.feed(bytes([byte]))
        got.extend(lines_of(buffer))
    assert got == [Line(b"EHLO a", True), Line(b"NOOP", True)]


def test_over_long_line_is_dropped_as_it_arrives() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"x" * 11)
    assert buffer.next() is None
    assert buffer.pending == 0  # nothing kept
    buffer.feed(b"y" * 1000)
    assert buffer.next() is None and buffer.pending == 0
    buffer.feed(b"z\r\nnext\r\n")
    assert lines_of(buffer) == [Line(b"", True, overlong=True), Line(b"next", True)]


def test_over_long_line_ending_in_bare_lf_and_cr_split_from_lf() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"x" * 20 + b"\n")
    assert lines_of(buffer) == [Line(b"", False, overlong=True)]
    buffer.feed(b"y" * 20 + b"\r")
    assert buffer.next() is None
    buffer.feed(b"\n")
    assert lines_of(buffer) == [Line(b"", True, overlong=True)]


def test_limit_counts_the_crlf() -> None:
    buffer = LineBuffer(10)
    buffer.feed(b"12345678\r\n123456789\r\n")
    assert lines_of(buffer) == [Line(b"12345678", True), Line(b"", True, overlong=True)]


def test_clear_forgets_pending_bytes() -> None:
    buffer = LineBuffer(100)
    buffer.feed(b"STARTTLS\r\nMAIL FROM:<a@b>\r\nRCPT")
    assert buffer.next() == Line(b"STARTTLS", True)
    assert buffer.clear() == len(b"MAIL FROM:<a@b>\r\nRCPT")
    assert buffer.next() is None


@pytest.mark.parametrize("line, stored", [
    (Line(b"plain", True), b"plain\r\n"),
    (Line(b"..stuffed", True), b".stuffed\r\n"),
    (Line(b".", False), b".\r\n"),  # a lone dot that did not end DATA stays content
    (Line(b"", False), b"\r\n"),
    (Line(b"a\rb", True), b"a\r\nb\r\n"),
    (Line(b"a\r.\r", True), b"a\r\n.\r\n\r\n"),
    (Line(b"caf\xc3\xa9 8bit", True), b"caf\xc3\xa9 8bit\r\n"),
])
def test_data_line_bytes(line: Line, stored: bytes) -> None:
    assert data_line_bytes(line) == stored


def test_protocol_keywords() -> None:
    assert protocol_keyword(False, False, False, False) == "SMTP"
    assert protocol_keyword(True, False, False, False) == "ESMTP"
    assert protocol_keyword(True, True, False, False) == "ESMTPS"
    assert protocol_keyword(True, False, True, False) == "ESMTPA"
    assert protocol_keyword(True, True, True, False) == "ESMTPSA"
    assert protocol_keyword(True, True, True, True) == "UTF8SMTPSA"


def test_received_header_cannot_be_broken_by_client_text() -> None:
    header = received_header(helo="evil\r\nBcc: x@y", client_address="192.0.2.1",
                             hostname="relay.test", keyword="ESMTP", transaction_id="ab12",
                             when=0)
    assert header == (b"Received: from evil??Bcc:?x@y ([192.0.2.1])\r\n"
                      b"\tby relay.test (xrelay) with ESMTP id ab12;\r\n"
                      b"\tThu, 01 Jan 1970 00:00:00 GMT\r\n")


def test_ends_data_strict_and_lenient() -> None:
    from xrelay.inbound.lines import Line, ends_data

    dot_crlf, dot_lf = Line(b".", True), Line(b".", False)
    # Strict: only CRLF "." CRLF.
    assert ends_data(dot_crlf, True, lenient=False)
    assert not ends_data(dot_lf, True, lenient=False)      # CRLF.LF
    assert not ends_data(dot_crlf, False, lenient=False)   # LF.CRLF
    assert not ends_data(dot_lf, False, lenient=False)     # LF.LF
    # Lenient: a single dot whatever its line ends; never a dot with anything else.
    for line, previous in ((dot_lf, True), (dot_crlf, False), (dot_lf, False)):
        assert ends_data(line, previous, lenient=True)
    assert not ends_data(Line(b".\r", False), False, lenient=True)
    assert not ends_data(Line(b"..", True), True, lenient=True)
    assert not ends_data(Line(b"", True, overlong=True), True, lenient=True)
