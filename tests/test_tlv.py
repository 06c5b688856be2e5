"""BER-TLV: length and tag forms, the Doc 9303-10 A.1 EF.COM, malformed input, round trips."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kat import h, load

from chip.errors import EncodingError
from chip.tlv import (
    encode_length,
    encode_tag,
    is_constructed,
    iter_tags,
    iter_tlv,
    read_tag,
    read_tlv,
    tlv,
    unwrap,
)

# --- known answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "encoded"),
    [
        (0, "00"),
        (0x7F, "7F"),
        (0x80, "8180"),
        (0xFF, "81FF"),
        (0x100, "820100"),
        (0x31A0, "8231A0"),  # 12 704, the DG2 template of Doc 9303-10 A.3
        (0xFFFF, "82FFFF"),
        (0x10000, "83010000"),
        (0x01000000, "8401000000"),
    ],
)
def test_length_forms(n: int, encoded: str) -> None:
    assert encode_length(n) == h(encoded)
    tag, value, end = read_tlv(h("04") + h(encoded) + bytes(n))
    assert (tag, len(value), end) == (0x04, n, 1 + len(h(encoded)) + n)


@pytest.mark.parametrize(
    ("tag", "encoded", "constructed"),
    [
        (0x02, "02", False),
        (0x5C, "5C", False),
        (0x61, "61", True),
        (0xA1, "A1", True),
        (0x5F1F, "5F1F", False),
        (0x5F2E, "5F2E", False),
        (0x7F61, "7F61", True),
        (0x7F2E, "7F2E", True),
        (0x5F8001, "5F8001", False),
        (0x7F8101, "7F8101", True),
    ],
)
def test_tag_forms(tag: int, encoded: str, constructed: bool) -> None:
    assert encode_tag(tag) == h(encoded)
    assert read_tag(h(encoded)) == (tag, len(h(encoded)))
    assert is_constructed(tag) is constructed


def test_ef_com_of_doc_9303_10_appendix_a1_splits_into_its_elements() -> None:
    vector = load("icao-9303-part10/lds-examples.toml").named("A.1-ef-com-lds-1.7")
    content = unwrap(h(vector["encoded"]), 0x60)
    assert list(iter_tlv(content)) == [
        (0x5F01, b"0107"),
        (0x5F36, b"040000"),
        (0x5C, h("6175766C")),
    ]
    assert list(iter_tags(h("6175766C"))) == [0x61, 0x75, 0x76, 0x6C]


def test_tag_list_with_two_byte_tags() -> None:
    # Doc 9303-10 A.5: the DG11 tag list.
    assert list(iter_tags(h("5F0E5F115F425F125F13"))) == [0x5F0E, 0x5F11, 0x5F42, 0x5F12, 0x5F13]


def test_tlv_builds_nested_objects() -> None:
    assert tlv(0x7F61, tlv(0x02, b"\x01")) == h("7F6103020101")
    assert tlv(0x5F2E, bytes(200))[:4] == h("5F2E81C8")


# --- malformed input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        "",  # nothing at all
        "04",  # no length
        "0480",  # indefinite length
        "048101",  # long form, value missing
        "0482",  # long form, length bytes missing
        "04850000000001",  # five length bytes
        "0403AABB",  # value shorter than announced
        "5F",  # tag announces a second byte that is missing
        "5F8080801F00",  # tag longer than three bytes
        "0000",  # '00' is not a tag
        "FF00",  # 'FF' is not a tag
    ],
)
def test_malformed_objects_raise_encoding_error(data: str) -> None:
    with pytest.raises(EncodingError):
        read_tlv(h(data))


def test_indefinite_length_is_refused_with_a_reason() -> None:
    with pytest.raises(EncodingError, match="indefinite"):
        list(iter_tlv(h("3080020101 0000")))


def test_unwrap_wants_exactly_one_object_of_the_tag() -> None:
    assert unwrap(h("5C026175"), 0x5C) == h("6175")
    with pytest.raises(EncodingError, match="expected tag 60"):
        unwrap(h("5C026175"), 0x60)
    with pytest.raises(EncodingError, match="after"):
        unwrap(h("5C02617500"), 0x5C)


def test_iter_tlv_must_consume_exactly() -> None:
    with pytest.raises(EncodingError):
        list(iter_tlv(h("5C0261755C")))


@pytest.mark.parametrize("tag", [0, -1, 0x1F, 0x5F, 0x5F81, 0x5F808001, 0xFF, 0xFF01, 0x5F8080])
def test_malformed_tags_are_caller_errors(tag: int) -> None:
    with pytest.raises(ValueError):
        encode_tag(tag)


def test_impossible_lengths_are_caller_errors() -> None:
    with pytest.raises(ValueError):
        encode_length(-1)
    with pytest.raises(ValueError):
        encode_length(1 << 32)
    with pytest.raises(ValueError):
        read_tlv(h("0400"), -1)


# --- properties -----------------------------------------------------------------------------------

_LOW_FIVE = 0x1F

# Built, not filtered: a first byte announces more bytes exactly when its low five bits are set.
one_byte_tags = st.sampled_from([b for b in range(0x01, 0xFF) if b & _LOW_FIVE != _LOW_FIVE])
first_of_long = st.sampled_from([b for b in range(0x00, 0xFF) if b & _LOW_FIVE == _LOW_FIVE])
two_byte_tags = st.builds(lambda a, b: (a << 8) | b, first_of_long, st.integers(0x00, 0x7F))
three_byte_tags = st.builds(
    lambda a, b, c: (a << 16) | (b << 8) | c,
    first_of_long,
    st.integers(0x80, 0xFF),
    st.integers(0x00, 0x7F),
)
tags = st.one_of(one_byte_tags, two_byte_tags, three_byte_tags)


@given(tags, st.binary(max_size=300))
def test_round_trip(tag: int, value: bytes) -> None:
    encoded = tlv(tag, value)
    assert read_tlv(encoded) == (tag, value, len(encoded))
    assert unwrap(encoded, tag) == value


@given(st.integers(0, 0xFFFFFFFF))
def test_lengths_round_trip_in_their_shortest_form(n: int) -> None:
    encoded = encode_length(n)
    assert len(encoded) == (1 if n < 0x80 else 1 + (n.bit_length() + 7) // 8)
    if n <= 4096:
        assert read_tlv(h("04") + encoded + bytes(n)) == (0x04, bytes(n), 1 + len(encoded) + n)
    else:
        with pytest.raises(EncodingError, match=f"{n} bytes announced"):
            read_tlv(h("04") + encoded)


@given(st.lists(st.tuples(tags, st.binary(max_size=40)), max_size=8))
def test_siblings_round_trip(objects: list[tuple[int, bytes]]) -> None:
    data = b"".join(tlv(t, v) for t, v in objects)
    assert list(iter_tlv(data)) == objects
    assert list(iter_tags(b"".join(encode_tag(t) for t, _ in objects))) == [t for t, _ in objects]


@given(st.binary(max_size=64))
def test_random_bytes_raise_nothing_but_encoding_error(data: bytes) -> None:
    for parse in (
        lambda: list(iter_tlv(data)),
        lambda: list(iter_tags(data)),
        lambda: unwrap(data, 0x61),
        lambda: read_tlv(data),
    ):
        with contextlib.suppress(EncodingError):
            parse()


@given(tags, st.binary(min_size=1, max_size=50), st.data())
def test_any_truncation_is_detected(tag: int, value: bytes, data: st.DataObject) -> None:
    encoded = tlv(tag, value)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(EncodingError):
        unwrap(encoded[:cut], tag)
