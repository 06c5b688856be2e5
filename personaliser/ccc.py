"""Chinese Commercial Code (Standard Telegraph Code): four digits per Chinese character.

A Hong Kong identity card prints the code of every character of the Chinese name under it, so a
name survives systems without Chinese fonts.  The codes come from the Unicode Han Database,
``Unihan_OtherMappings.txt`` (Unicode 18.0.0 extract of ``kMainlandTelegraph`` and
``kTaiwanTelegraph``, as mirrored in github.com/frankslin/zh-telecodes,
``sources/Unihan_Telegraph.txt``).  Hong Kong names are written in traditional characters, and
Unihan gives most traditional forms only a ``kTaiwanTelegraph`` value (陳 U+9673: 7115; its
simplified form 陈 U+9648 carries the same number as ``kMainlandTelegraph``), so that field is
preferred; ``kMainlandTelegraph`` is used only where Taiwan has none.  Where both exist for the
characters below they agree.

The table covers every character of ``personaliser.synth.SURNAMES`` and ``GIVEN``; extend it from
the same Unihan fields.
"""

from __future__ import annotations

__all__ = ["CCC", "ccc_for"]

#: character -> code; comments give the code point and which Unihan field(s) carry the value
#: ("TW" kTaiwanTelegraph only, "TW=CN" both fields, same value).
CCC: dict[str, str] = {
    # surnames
    "陳": "7115",  # U+9673 TW
    "黃": "7806",  # U+9EC3 TW
    "李": "2621",  # U+674E TW=CN
    "張": "1728",  # U+5F35 TW
    "劉": "0491",  # U+5289 TW
    "吳": "0702",  # U+5433 TW
    "林": "2651",  # U+6797 TW=CN
    "何": "0149",  # U+4F55 TW=CN
    "梁": "2733",  # U+6881 TW=CN
    "曾": "2582",  # U+66FE TW=CN
    "周": "0719",  # U+5468 TW=CN
    "楊": "2799",  # U+694A TW
    "鄧": "6772",  # U+9127 TW
    "馮": "7458",  # U+99AE TW
    "郭": "6753",  # U+90ED TW=CN
    "馬": "7456",  # U+99AC TW
    "羅": "5012",  # U+7F85 TW
    "朱": "2612",  # U+6731 TW=CN
    "葉": "5509",  # U+8449 TW
    "蔡": "5591",  # U+8521 TW=CN
    # given-name characters
    "大": "1129",  # U+5927 TW=CN
    "文": "2429",  # U+6587 TW
    "偉": "0251",  # U+5049 TW
    "明": "2494",  # U+660E TW=CN
    "美": "5019",  # U+7F8E TW=CN
    "玲": "3781",  # U+73B2 TW=CN
    "嘉": "0857",  # U+5609 TW=CN
    "欣": "2946",  # U+6B23 TW=CN
    "志": "1807",  # U+5FD7 TW=CN
    "強": "1730",  # U+5F37 TW
    "詩": "6108",  # U+8A69 TW
    "穎": "4481",  # U+7A4E TW
    "俊": "0193",  # U+4FCA TW=CN
    "傑": "0267",  # U+5091 TW=CN
    "麗": "7787",  # U+9E97 TW
    "芳": "5364",  # U+82B3 TW=CN
    "國": "0948",  # U+570B TW
    "華": "5478",  # U+83EF TW
    "子": "1311",  # U+5B50 TW=CN
    "浩": "3185",  # U+6D69 TW=CN
    "霖": "7207",  # U+9716 TW=CN
    "婷": "1250",  # U+5A77 TW=CN
    "雅": "7161",  # U+96C5 TW=CN
    "琪": "3825",  # U+742A TW=CN
    "德": "1795",  # U+5FB7 TW=CN
    "輝": "6540",  # U+8F1D TW
    "儀": "0308",  # U+5100 TW
    "希": "1585",  # U+5E0C TW=CN
    "樂": "2867",  # U+6A02 TW
    "成": "2052",  # U+6210 TW=CN
}


def ccc_for(text: str) -> str:
    """The codes of ``text``'s characters, space-separated (``"陳大文"`` -> ``"7115 1129 2429"``).

    Raises :class:`KeyError` for a character the table lacks; the error names its code point
    only (a name is personal data, one code point of it is not enough to identify anyone).
    """
    codes = []
    for c in text:
        code = CCC.get(c)
        if code is None:
            raise KeyError(f"no Chinese Commercial Code for U+{ord(c):04X}")
        codes.append(code)
    return " ".join(codes)
