"""Chinese Commercial Codes: known answers from Unihan, coverage of the synthetic names, round trip.

Known answers are lines of ``Unihan_OtherMappings.txt`` (Unicode 18.0.0), quoted verbatim from
the extract in github.com/frankslin/zh-telecodes, ``sources/Unihan_Telegraph.txt``, and parsed
here in their upstream format.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personaliser.ccc import CCC, ccc_for
from personaliser.synth import GIVEN, SURNAMES

UNIHAN_LINES = """
U+9673\tkTaiwanTelegraph\t7115
U+9648\tkMainlandTelegraph\t7115
U+5927\tkMainlandTelegraph\t1129
U+5927\tkTaiwanTelegraph\t1129
U+6587\tkTaiwanTelegraph\t2429
U+9EC3\tkTaiwanTelegraph\t7806
U+5F35\tkTaiwanTelegraph\t1728
U+5289\tkTaiwanTelegraph\t0491
U+5433\tkTaiwanTelegraph\t0702
U+5434\tkMainlandTelegraph\t0702
U+5049\tkTaiwanTelegraph\t0251
U+570B\tkTaiwanTelegraph\t0948
U+83EF\tkTaiwanTelegraph\t5478
U+6A02\tkTaiwanTelegraph\t2867
U+99AE\tkTaiwanTelegraph\t7458
U+4F55\tkMainlandTelegraph\t0149
U+4F55\tkTaiwanTelegraph\t0149
"""
_LINE = re.compile(r"U\+([0-9A-F]{4,6})\t(kMainlandTelegraph|kTaiwanTelegraph)\t(\d{4})")


def _unihan() -> list[tuple[str, str, str]]:
    out = []
    for line in UNIHAN_LINES.strip().splitlines():
        match = _LINE.fullmatch(line)
        assert match, line
        cp, field, code = match.groups()
        out.append((chr(int(cp, 16)), field, code))
    return out


def test_table_matches_unihan_for_traditional_characters() -> None:
    checked = 0
    for char, _field, code in _unihan():
        if char in CCC:  # traditional forms; the simplified ones (陈 吴) are not in the table
            assert CCC[char] == code, char
            checked += 1
    assert checked >= 12


def test_simplified_and_traditional_forms_share_the_code() -> None:
    """Why kTaiwanTelegraph: Unihan files the shared number under the simplified form for the
    mainland field (陈 U+9648) and under the traditional one for Taiwan (陳 U+9673)."""
    by_char = {(c, f): code for c, f, code in _unihan()}
    assert by_char[("陳", "kTaiwanTelegraph")] == by_char[("陈", "kMainlandTelegraph")]
    assert by_char[("吳", "kTaiwanTelegraph")] == by_char[("吴", "kMainlandTelegraph")]


def test_the_specimen_name() -> None:
    """陳大文 (CHAN, Tai Man), the name on the Immigration Department's specimen cards."""
    assert ccc_for("陳大文") == "7115 1129 2429"


def test_every_synthetic_name_character_has_a_code() -> None:
    chars = {z for _, z in SURNAMES} | {z for _, z in GIVEN}
    assert chars <= set(CCC)
    assert all(re.fullmatch(r"\d{4}", code) for code in CCC.values())
    assert len(set(CCC.values())) == len(CCC)  # one code per character


def test_unknown_characters_raise_key_error_with_the_code_point_only() -> None:
    with pytest.raises(KeyError, match=r"U\+9F8D") as info:
        ccc_for("陳龍")
    assert "龍" not in str(info.value) and "陳" not in str(info.value)


def test_empty_name_has_no_code() -> None:
    assert ccc_for("") == ""


@given(st.text(alphabet=sorted(CCC), min_size=1, max_size=6))
def test_codes_follow_the_characters_in_order(name: str) -> None:
    codes = ccc_for(name).split(" ")
    assert len(codes) == len(name)
    assert codes == [CCC[c] for c in name]
    inverse = {v: k for k, v in CCC.items()}
    assert "".join(inverse[c] for c in codes) == name
