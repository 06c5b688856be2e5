"""MRZ: Part 3 check digits, specimens, names and transliteration; TD1 build and parse."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kat import load

from chip.errors import EncodingError
from chip.hkid import format_hkid
from chip.holder import HolderData
from chip.mrz import (
    TD1,
    build_td1,
    check_digit,
    format_name,
    mrz_information,
    parse_td1,
    transliterate,
)

SPECIMENS = load("icao-9303-part3/td-specimens.toml")
ERIKSSON = SPECIMENS.named("td1-eriksson")
ERIKSSON_TEXT = "".join(ERIKSSON["lines"])

# --- known answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vector", load("icao-9303-part3/check-digits.toml").vectors, ids=lambda v: v["name"]
)
def test_appendix_a_check_digits(vector: dict[str, Any]) -> None:
    assert check_digit(vector["input"]) == vector["check"]


def test_appendix_a_example_3_composite_is_built_from_its_line() -> None:
    vector = load("icao-9303-part3/check-digits.toml").named("example-3-td3-composite")
    line = vector["line"]
    assert line[0:10] + line[13:20] + line[21:43] == vector["input"]


def test_appendix_a_example_4_is_a_valid_td1_top() -> None:
    vector = load("icao-9303-part3/check-digits.toml").named("example-4-td1-composite")
    middle = vector["middle"] + vector["check"]
    td1 = parse_td1(vector["upper"] + middle + "SPECIMEN<<" + "<" * 20)
    assert td1.lines[1] == middle


def test_td1_specimen_parses_into_its_fields() -> None:
    td1 = parse_td1("\n".join(ERIKSSON["lines"]))
    for field in (
        "document_code",
        "issuing_state",
        "document_number",
        "optional_data_1",
        "date_of_birth",
        "sex",
        "date_of_expiry",
        "nationality",
        "optional_data_2",
    ):
        assert getattr(td1, field) == ERIKSSON[field], field
    assert td1.name == ERIKSSON["name_field"]
    assert (td1.primary_identifier, td1.secondary_identifier) == (
        ERIKSSON["primary"],
        ERIKSSON["secondary"],
    )
    assert td1.lines == tuple(ERIKSSON["lines"])
    assert td1.text == ERIKSSON_TEXT
    assert str(td1) == "\n".join(ERIKSSON["lines"])


def test_td1_specimen_check_digits() -> None:
    upper, middle, _ = ERIKSSON["lines"]
    assert check_digit(ERIKSSON["document_number"]) == ERIKSSON["check_document_number"]
    assert check_digit(ERIKSSON["date_of_birth"]) == ERIKSSON["check_date_of_birth"]
    assert check_digit(ERIKSSON["date_of_expiry"]) == ERIKSSON["check_date_of_expiry"]
    assert upper[5:30] + middle[0:7] + middle[8:15] + middle[18:29] == ERIKSSON["composite_input"]
    assert check_digit(ERIKSSON["composite_input"]) == ERIKSSON["check_composite"] == middle[29]


def test_td3_specimen_check_digits() -> None:
    vector = SPECIMENS.named("td3-eriksson")
    line = vector["lines"][1]
    assert line[0:9] == vector["document_number"]
    assert check_digit(vector["document_number"]) == vector["check_document_number"] == line[9]
    assert check_digit(vector["date_of_birth"]) == vector["check_date_of_birth"] == line[19]
    assert check_digit(vector["date_of_expiry"]) == vector["check_date_of_expiry"] == line[27]
    assert check_digit(vector["personal_number"]) == vector["check_personal_number"] == line[42]
    assert line[0:10] + line[13:20] + line[21:43] == vector["composite_input"]
    assert check_digit(vector["composite_input"]) == vector["check_composite"] == line[43]


@pytest.mark.parametrize(
    "vector", load("icao-9303-part3/mrz-information.toml").vectors, ids=lambda v: v["name"]
)
def test_mrz_information(vector: dict[str, Any]) -> None:
    assert (
        mrz_information(
            vector["document_number"], vector["date_of_birth"], vector["date_of_expiry"]
        )
        == vector["mrz_information"]
    )


def test_mrz_information_keeps_the_filler_of_a_short_number() -> None:
    # chip-peers 1.3: dropping it (JMRTD's getDocumentNumber) gives a different BAC key.
    assert mrz_information("L898902C", date(1969, 8, 6), date(1994, 6, 23)).startswith("L898902C<3")
    assert ERIKSSON["mrz_information"] == mrz_information(
        parse_td1(ERIKSSON_TEXT).document_number, "740812", "120415"
    )


NAMES = load("icao-9303-part3/names.toml").vectors


@pytest.mark.parametrize(
    "vector", [v for v in NAMES if v["kind"] == "transliterate"], ids=lambda v: v["name"]
)
def test_transliteration_examples(vector: dict[str, Any]) -> None:
    assert transliterate(vector["viz"]) == vector["mrz"]
    assert transliterate(vector["viz"].lower()) == vector["mrz"]


@pytest.mark.parametrize(
    "vector", [v for v in NAMES if v["kind"] == "name"], ids=lambda v: v["name"]
)
def test_name_field_examples(vector: dict[str, Any]) -> None:
    primary = transliterate(vector["primary"])
    secondary = transliterate(vector["secondary"])
    assert format_name(primary, secondary, vector["length"]) == vector["mrz"]


def test_transliteration_details() -> None:
    assert transliterate("  van   der  Berg ") == "VAN<DER<BERG"
    assert transliterate("Smith–Jones") == "SMITH<JONES"  # en dash is a hyphen too
    assert transliterate("O’Connor") == "OCONNOR"  # typographic apostrophe
    assert transliterate("Jr.") == "JR"  # other punctuation is dropped
    assert transliterate("straße") == "STRASSE"
    assert transliterate("Zoe\u0308") == "ZOE"  # decomposed Ë is composed first
    assert transliterate("") == ""


@pytest.mark.parametrize("name", ["陳大文", "Louis 14", "Ⅷ", "Ŀ\u0327\u0301x", "Ơn"])
def test_untransliterable_names_are_refused_without_echoing_them(name: str) -> None:
    with pytest.raises(EncodingError) as info:
        transliterate(name, field="given_names")
    assert info.value.field == "given_names"
    assert name not in str(info.value)


def test_a_cut_landing_on_a_filler_brings_in_the_next_initial() -> None:
    # A 17-letter component ends at position 29, so position 30 would be '<': the component
    # gives up a letter and the next component's initial ends the field.
    assert format_name("ABCDEFGHIJ", "KLMNOPQRSTUVWXYZA<BC", 30) == "ABCDEFGHIJ<<KLMNOPQRSTUVWXYZ<B"


def test_a_long_primary_identifier_is_cut_to_leave_the_secondary_initial() -> None:
    # Part 5 4.2.3.2 names, cut by this module's method (Part 5 shows other valid cuts).
    primary = transliterate("BENNELONG WOOLOOMOOLOO WARRANDYTE WARNAMBOOL")
    field = format_name(primary, transliterate("DINGO POTOROO"), 30)
    assert field == "BENNELONG<WOOLOOMOOLOO<WARR<<D"


def test_a_name_of_single_initials_cannot_end_in_a_letter() -> None:
    with pytest.raises(EncodingError) as info:
        format_name("<".join("ABCDEFGHIJKLMNOP"), "", 30)
    assert info.value.field == "name"


# --- parsing failures name the field --------------------------------------------------------------


def _with(text: str, index: int, char: str) -> str:
    return text[:index] + char + text[index + 1 :]


@pytest.mark.parametrize(
    ("index", "field"),
    [
        (14, "document_number"),  # document number check digit
        (36, "date_of_birth"),  # DOB check digit
        (44, "date_of_expiry"),  # DOE check digit
        (59, "composite"),
        (20, "composite"),  # optional data 1 is covered only by the composite
        (5, "document_number"),  # a document number character
    ],
)
def test_each_check_digit_is_verified(index: int, field: str) -> None:
    replacement = "1" if ERIKSSON_TEXT[index] in "<0" else "0"
    with pytest.raises(EncodingError) as info:
        parse_td1(_with(ERIKSSON_TEXT, index, replacement))
    assert info.value.field == field


def test_fields_outside_check_digits_are_not_covered() -> None:
    # Nationality (middle 16-18) and the name are outside every check digit (Part 5, 4.2.4).
    assert parse_td1(_with(ERIKSSON_TEXT, 45, "X")).nationality == "XTO"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (ERIKSSON_TEXT[:-1], "mrz"),
        (ERIKSSON_TEXT.lower(), "mrz"),
        (_with(ERIKSSON_TEXT, 14, "<"), "document_number"),  # long document number
        ("P" + ERIKSSON_TEXT[1:], "document_code"),
        (_with(ERIKSSON_TEXT, 37, "Q"), "sex"),
    ],
)
def test_malformed_mrz(text: str, field: str) -> None:
    with pytest.raises(EncodingError) as info:
        parse_td1(text)
    assert info.value.field == field


# --- building from holder data --------------------------------------------------------------------


def _holder(**changes: Any) -> HolderData:
    values: dict[str, Any] = {
        "document_number": "RA0012345",
        "surname": "Chan",
        "given_names": "Tai-man",
        "date_of_birth": date(1985, 3, 14),
        "sex": "F",
        "date_of_expiry": date(2035, 3, 14),
        "date_of_issue": date(2025, 3, 14),
        "personal_number": "A123456(3)",
    }
    values.update(changes)
    return HolderData(**values)


def test_build_td1_for_a_hong_kong_card() -> None:
    td1 = build_td1(_holder())
    assert td1.lines == (
        "IDCHNRA00123452A1234563<<<<<<<",
        "8503149F3503144CHN<<<<<<<<<<<8",
        "CHAN<<TAI<MAN<<<<<<<<<<<<<<<<<",
    )
    assert td1.optional_data_1 == "A1234563"
    assert parse_td1(str(td1)) == td1
    assert repr(td1) == "TD1(<personal data>)"


def test_build_td1_truncates_and_transliterates() -> None:
    td1 = build_td1(
        _holder(
            surname="Nilavadhanananda-Ö",
            given_names="Chayapa Dejthamrong Krasuang",
            sex="X",
            personal_number="",
            issuing_state="D",
            nationality="D",
            document_code="I",
            document_number="X1",
        )
    )
    assert td1.lines[0] == "I<D<<X1<<<<<<<4<<<<<<<<<<<<<<<"
    assert td1.lines[1][7] == "<"  # X is written as the filler in the MRZ (Part 5 note f)
    assert td1.lines[2] == "NILAVADHANANANDA<OE<<CHAYAPA<D"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"document_number": "ABCDEFGHIJ"}, "document_number"),
        ({"document_number": "ab1"}, "document_number"),
        ({"sex": "male"}, "sex"),
        ({"personal_number": "A123456(4)"}, "personal_number"),
        ({"surname": "陳"}, "surname"),
        ({"surname": "-"}, "surname"),
        ({"given_names": "3"}, "given_names"),
        ({"document_code": "P"}, "document_code"),
        ({"nationality": "CHINA"}, "nationality"),
    ],
)
def test_build_td1_refuses_bad_holder_data(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(EncodingError) as info:
        build_td1(_holder(**changes))
    assert info.value.field == field


def test_td1_fields_drop_trailing_fillers() -> None:
    td1 = TD1("I<", "UTO", "L898902C<", "", "690806", "F", "940623", "UTO", "<<<", "SMITH<<J<<")
    assert (td1.document_code, td1.document_number, td1.optional_data_2, td1.name) == (
        "I",
        "L898902C",
        "",
        "SMITH<<J",
    )


# --- properties -----------------------------------------------------------------------------------

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyzÄÖÜßÉÑØÅæçłőž"
components = st.text(alphabet=_LETTERS, min_size=2, max_size=12)
names = st.lists(components, min_size=1, max_size=4).flatmap(
    lambda parts: st.sampled_from([" ", "-", "  "]).map(lambda sep: sep.join(parts))
)
holders = st.builds(
    HolderData,
    document_number=st.from_regex(r"[A-Z0-9]{1,9}", fullmatch=True),
    surname=names,
    given_names=st.one_of(st.just(""), names),
    date_of_birth=st.dates(),
    sex=st.sampled_from("MFX"),
    date_of_expiry=st.dates(),
    date_of_issue=st.dates(),
    nationality=st.from_regex(r"[A-Z]{1,3}", fullmatch=True),
    issuing_state=st.from_regex(r"[A-Z]{1,3}", fullmatch=True),
    document_code=st.sampled_from(["I", "ID", "IC", "AR", "C"]),
    personal_number=st.one_of(
        st.just(""), st.from_regex(r"[A-Z]{1,2}[0-9]{6}", fullmatch=True).map(format_hkid)
    ),
)


@given(holders)
def test_build_then_parse_round_trips(holder: HolderData) -> None:
    td1 = build_td1(holder)
    assert all(len(line) == 30 and re.fullmatch(r"[A-Z0-9<]+", line) for line in td1.lines)
    assert parse_td1(str(td1)) == td1
    assert parse_td1(td1.text) == td1
    upper, middle, _ = td1.lines
    assert mrz_information(td1.document_number, holder.date_of_birth, holder.date_of_expiry) == (
        upper[5:15] + middle[0:7] + middle[8:15]
    )


mrz_components = st.lists(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=2, max_size=15), min_size=0, max_size=5
)


@given(mrz_components.filter(bool), mrz_components, st.sampled_from([30, 31, 39]))
def test_name_field_rules(primary: list[str], secondary: list[str], length: int) -> None:
    field = format_name("<".join(primary), "<".join(secondary), length)
    assert len(field) == length
    full = "<".join(primary) + ("<<" + "<".join(secondary) if secondary else "")
    if len(full) <= length:
        assert field == full.ljust(length, "<")
        return
    # Truncated (Part 5 4.2.2.3): ends in a letter, keeps '<<' and at least the secondary's
    # initial, and every component written is a prefix of the component it came from.
    assert field[-1].isalpha()
    written = field.split("<<", 1)
    assert len(written) == (2 if secondary else 1)
    for part, original in zip(written, (primary, secondary), strict=False):
        pieces = part.split("<")
        assert pieces and all(piece for piece in pieces)
        assert all(original[i].startswith(piece) for i, piece in enumerate(pieces))


@given(st.text(alphabet=_LETTERS + " -',.", max_size=40))
def test_transliteration_yields_mrz_components(name: str) -> None:
    result = transliterate(name)
    assert re.fullmatch(r"([A-Z]+(<[A-Z]+)*)?", result)
