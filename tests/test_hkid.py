"""HKID check digits: every chip-vectors section 11 number, both written forms, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kat import load

from chip.errors import EncodingError
from chip.hkid import format_hkid, hkid_check_digit, is_valid_hkid, parse_hkid

VECTORS = load("hkid/check-digits.toml").vectors


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["name"])
def test_check_digit(vector: dict[str, Any]) -> None:
    body, check = vector["body"], vector["check"]
    assert hkid_check_digit(body) == check
    assert format_hkid(body) == f"{body}({check})"
    assert parse_hkid(f"{body}({check})") == (body, check)
    assert parse_hkid(f"{body}{check}") == (body, check)
    assert is_valid_hkid(f"{body}({check})")


def test_weighted_sums_of_section_11() -> None:
    # The sums the reference prints, recomputed from the rule rather than from the module.
    values = {" ": 36, **{chr(ord("A") + i): 10 + i for i in range(26)}}
    for vector in VECTORS:
        if "weighted_sum" not in vector:
            continue
        body = vector["body"].rjust(8)
        digits = [values[c] for c in body[:2]] + [int(d) for d in body[2:]]
        assert (
            sum(w * v for w, v in zip(range(9, 1, -1), digits, strict=True))
            == vector["weighted_sum"]
        )


@pytest.mark.parametrize("vector", [v for v in VECTORS if "invalid" in v], ids=lambda v: v["name"])
def test_published_wrong_numbers_are_rejected(vector: dict[str, Any]) -> None:
    assert not is_valid_hkid(vector["invalid"])
    with pytest.raises(EncodingError, match="check digit") as info:
        parse_hkid(vector["invalid"], field="personal_number")
    assert info.value.field == "personal_number"
    assert vector["body"] not in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["", "A123456", "a123456(3)", "ABC123456(1)", "A12345(3)", "A1234567(3)", "A123456(3",
     "A123456 3", "A123456((3))", "1234567(3)", "A123456(B)", "A123456(3)X"],
)  # fmt: skip
def test_malformed_numbers(text: str) -> None:
    assert not is_valid_hkid(text)
    with pytest.raises(EncodingError) as info:
        parse_hkid(text)
    assert info.value.field == "hkid"


def test_malformed_body_names_the_field() -> None:
    with pytest.raises(EncodingError) as info:
        hkid_check_digit("A12345", field="personal_number")
    assert info.value.field == "personal_number"


bodies = st.from_regex(r"[A-Z]{1,2}[0-9]{6}", fullmatch=True)


@given(bodies)
def test_exactly_one_check_character_is_valid(body: str) -> None:
    check = hkid_check_digit(body)
    assert parse_hkid(format_hkid(body)) == (body, check)
    valid = [c for c in "0123456789A" if is_valid_hkid(f"{body}({c})")]
    assert valid == [check]


@given(bodies, st.integers(0, 7), st.data())
def test_a_changed_digit_is_detected(body: str, position: int, data: st.DataObject) -> None:
    # Weights 9..2 are all below the prime 11, so any single substitution changes the sum mod 11.
    digits_start = len(body) - 6
    index = digits_start + position % 6
    replacement = data.draw(st.sampled_from([d for d in "0123456789" if d != body[index]]))
    changed = body[:index] + replacement + body[index + 1 :]
    assert hkid_check_digit(changed) != hkid_check_digit(body)
