"""The header-block scanner: what the sender rules, the submission fixes and the trace see."""

from __future__ import annotations

from hypothesis import given, strategies as st

from xrelay.inbound.headers import MAX_KEPT, HeaderBlock


def scan(*chunks: bytes) -> HeaderBlock:
    block = HeaderBlock()
    for chunk in chunks:
        block.feed(chunk)
    return block


def test_fields_and_end_of_header_block() -> None:
    block = scan(b"From: Scanner <Scanner@Example.com>\r\n",
                 b"Subject: =?utf-8?q?Scan_f=C3=BCr_you?=\r\n",
                 b"\r\n", b"Date: not a header, the body\r\n")
    assert block.done
    assert block.has("FROM") and block.has("subject") and not block.has("date")
    assert block.addresses("from") == ["scanner@example.com"]
    assert block.decoded("subject") == "Scan für you"


def test_folded_values_are_unfolded() -> None:
    block = scan(b"Message-ID:\r\n <abc@example.com>\r\nSubject: one\r\n\ttwo\r\n\r\n")
    assert block.first("message-id") == "<abc@example.com>"
    assert block.first("subject") == "one two"


def test_several_from_addresses_and_sender() -> None:
    block = scan(b"From: a@example.com, B <b@example.com>\r\nSender: c@example.com\r\n\r\n")
    assert block.addresses("from") == ["a@example.com", "b@example.com"]
    assert block.addresses("sender") == ["c@example.com"]


def test_unparseable_from_is_kept_raw_so_rules_refuse_it() -> None:
    assert scan(b"From: <<<\r\n\r\n").addresses("from") == ["<<<"]


def test_a_non_field_line_ends_the_block() -> None:
    block = scan(b"Hello there\r\nFrom: late@example.com\r\n")
    assert block.done and not block.has("from")


def test_whole_block_in_one_chunk_with_a_body() -> None:
    block = scan(b"From: a@example.com\r\nDate: x\r\n\r\nFrom: body@example.com\r\n")
    assert block.addresses("from") == ["a@example.com"] and block.has("date")


def test_memory_is_bounded() -> None:
    block = scan(b"Subject: " + b"x" * (MAX_KEPT * 4) + b"\r\n",
                 *([b"Subject: y\r\n"] * 1000), b"\r\n")
    assert sum(len(v) for vs in block.values.values() for v in vs) <= MAX_KEPT


@given(st.binary(max_size=2000))
def test_never_raises(data: bytes) -> None:
    HeaderBlock().feed(data)
