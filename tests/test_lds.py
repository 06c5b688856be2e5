"""LDS elementary files: Doc 9303-10 samples, hand-assembled bytes, malformed files, round trips."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import time
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kat import h, load
from PIL import Image

from chip.biometrics import FingerView, Minutia
from chip.errors import EncodingError
from chip.holder import HolderData
from chip.lds.base import LDSFile
from chip.lds.com import EFCom
from chip.lds.dg1 import DG1
from chip.lds.dg2 import DG2, FaceImage, FeaturePoint, jpeg_size
from chip.lds.dg3 import DG3, finger_subtype
from chip.lds.dg11 import DG11
from chip.lds.dg12 import DG12
from chip.tlv import tlv

EXAMPLES = load("icao-9303-part10/lds-examples.toml")
QUOTED = load("icao-9303-part10/quoted-files.toml")


def printed(text: str) -> bytes:
    """Bytes of a Doc 9303-10 Appendix A line: quoted tokens are hex, other runs ASCII text."""
    parts = re.split(r"'([0-9A-Fa-f]*)'", text)
    out = bytearray()
    for i, part in enumerate(parts):
        out += bytes.fromhex(part) if i % 2 else part.strip().encode("ascii")
    return bytes(out)


def _jpeg(width: int, height: int, *, progressive: bool = False, noise: bool = False) -> bytes:
    image = Image.new("RGB", (width, height), (90, 120, 150))
    if noise:
        image = Image.frombytes(
            "RGB", (width, height), bytes(range(256)) * (width * height * 3 // 256 + 1)
        )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, progressive=progressive)
    return buffer.getvalue()


# A hand-made 54-byte JPEG skeleton: SOI, APP0 (JFIF), SOF0 320 x 240, SOS, three bytes, EOI.
TINY_JPEG = h(
    "FFD8"
    "FFE0 0010 4A46494600 0101 00 0001 0001 0000"
    "FFC0 0011 08 0140 00F0 03 012200 021101 031101"
    "FFDA 0008 01 0100 003F00"
    "001122"
    "FFD9"
)


def _holder(**changes: Any) -> HolderData:
    values: dict[str, Any] = {
        "document_number": "RA0012345",
        "surname": "Chan",
        "given_names": "Tai Man",
        "date_of_birth": date(1985, 3, 14),
        "sex": "M",
        "date_of_expiry": date(2035, 3, 14),
        "date_of_issue": date(2025, 3, 14),
        "personal_number": "A123456(3)",
        "name_national": "陳大文",
        "place_of_birth": "香港",
        "portrait_jpeg": TINY_JPEG,
        "fingers": (FingerView(7, 60, 300, 400, 197, (Minutia(1, 100, 200, 64, 80),)),),
    }
    values.update(changes)
    return HolderData(**values)


# --- EF.COM --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vector",
    [
        EXAMPLES.named("A.1-ef-com-lds-1.7"),
        *(v for v in QUOTED.vectors if v["name"].startswith("ef-com")),
    ],
    ids=lambda v: v["name"],
)
def test_ef_com_known_answers(vector: dict[str, Any]) -> None:
    encoded = h(vector["encoded"])
    com = EFCom.from_bytes(encoded)
    assert (com.lds_version, com.unicode_version) == (
        vector["lds_version"],
        vector["unicode_version"],
    )
    assert com.data_groups == tuple(vector["data_groups"])
    assert com.to_bytes() == encoded
    built = EFCom.for_data_groups(
        vector["data_groups"],
        lds_version=vector["lds_version"],
        unicode_version=vector["unicode_version"],
    )
    assert built == com


def test_ef_com_defaults_to_lds_1_8() -> None:
    assert EFCom().to_bytes() == h("6014 5F01 04 30313038 5F36 06 303430303030 5C 02 6175")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ("6014 5F01 04 30313038 5F36 06 303430303030 5C 02 6177", "EF.COM.tags"),  # 77 is EF.SOD
        ("6014 5F01 04 30313038 5F36 06 303430303030 5C 02 6161", "EF.COM.tags"),  # DG1 twice
        ("600D 5F01 04 30313038 5C 04 61756376", "EF.COM"),  # no Unicode version
        ("6014 5F01 04 312E3820 5F36 06 303430303030 5C 02 6175", "EF.COM.lds_version"),
        ("6114 5F01 04 30313038 5F36 06 303430303030 5C 02 6175", "EF.COM"),  # wrong outer tag
        ("6015 5F01 04 30313038 5F36 06 303430303030 5C 02 6175", "EF.COM"),  # length overruns
    ],
)
def test_ef_com_malformed(data: str, field: str) -> None:
    with pytest.raises(EncodingError) as info:
        EFCom.from_bytes(h(data))
    assert info.value.field == field


# --- DG1 -----------------------------------------------------------------------------------------


def test_dg1_td1_of_appendix_a2_1() -> None:
    vector = EXAMPLES.named("A.2.1-dg1-td1")
    encoded = h(vector["encoded_header"]) + vector["mrz"].encode("ascii")
    assert DG1(vector["mrz"]).to_bytes() == encoded
    assert DG1.from_bytes(encoded).mrz == vector["mrz"]
    # The sample's composite check digit is wrong: DG1 keeps it, the TD1 parser says so.
    with pytest.raises(EncodingError) as info:
        DG1.from_bytes(encoded).td1()
    assert info.value.field == "composite"


@pytest.mark.parametrize("name", ["dg1-td1-eriksson", "dg1-td2-eriksson"])
def test_dg1_quoted_files(name: str) -> None:
    vector = QUOTED.named(name)
    encoded = h(vector["encoded"])
    assert DG1(vector["mrz"]).to_bytes() == encoded
    assert DG1.from_bytes(encoded) == DG1(vector["mrz"])
    if "sha256" in vector:
        assert hashlib.sha256(encoded).digest() == h(vector["sha256"])
        assert DG1.from_bytes(encoded).td1().document_number == "D23145890"


def test_dg1_from_holder_is_the_td1_mrz() -> None:
    dg1 = DG1.from_holder(_holder())
    assert dg1.mrz.startswith("IDCHNRA0012345") and len(dg1.mrz) == 90
    assert dg1.to_bytes()[:5] == h("615D5F1F5A")
    assert repr(dg1) == "DG1(<personal data>)"


@pytest.mark.parametrize(
    "data",
    [
        "6105 5F1F 02 3C3C",  # two characters
        "615D 5F1F 5A" + "61" * 90,  # lower case
        "615E 5F1F 5A" + "3C" * 90 + "00",  # trailing byte inside
        "615D 5F1E 5A" + "3C" * 90,  # wrong inner tag
    ],
)
def test_dg1_malformed(data: str) -> None:
    with pytest.raises(EncodingError) as info:
        DG1.from_bytes(h(data))
    assert info.value.field in ("DG1", "DG1.mrz")


# --- DG2 -----------------------------------------------------------------------------------------

# Doc 9303-10 4.7.2 and ISO/IEC 19794-5:2005 clause 5, assembled by hand for TINY_JPEG.
TINY_DG2 = (
    h(
        "75 81 81"
        " 7F61 7E"
        "  02 01 01"
        "  7F60 78"
        "   A1 0F  80 02 0101  81 01 02  87 02 0101  88 02 0008"
        "   5F2E 64"
        "    46414300 30313000 00000064 0001"  # 'FAC\0' '010\0' record length 100, one face
        "    00000056 0000 00 00 00 000000 0000 000000 000000"  # block 86, all unspecified
        "    01 00 00F0 0140 00 00 0000 0000"  # full frontal, JPEG, 240 x 320
    )
    + TINY_JPEG
)


def test_jpeg_size_from_the_frame_header() -> None:
    assert jpeg_size(TINY_JPEG) == (240, 320)
    assert jpeg_size(_jpeg(161, 97)) == (161, 97)
    assert jpeg_size(_jpeg(200, 250, progressive=True)) == (200, 250)  # SOF2
    assert jpeg_size(b"\xff\xd8\xff\xff" + TINY_JPEG[2:]) == (240, 320)  # fill byte


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x89PNG\r\n",
        TINY_JPEG[:22],  # cut inside the APP0 segment
        TINY_JPEG[:26],  # cut inside the frame header
        h("FFD8 FFDA 0008 0101 00003F00 FFD9"),  # scan before any frame header
        h("FFD8 FFC0 0011 08 0000 00F0 03 012200 021101 031101"),  # height 0 (DNL)
        h("FFD8 00"),  # not a marker
        h("FFD8 FFE0 0001"),  # impossible segment length
    ],
)
def test_jpeg_size_rejects_what_is_not_a_sized_jpeg(data: bytes) -> None:
    with pytest.raises(EncodingError) as info:
        jpeg_size(data)
    assert info.value.field == "DG2.jpeg"


def test_dg2_bytes_assembled_by_hand() -> None:
    dg2 = DG2.from_holder(_holder())
    assert dg2.faces[0].width == 240 and dg2.faces[0].height == 320
    assert dg2.to_bytes() == TINY_DG2
    assert DG2.from_bytes(TINY_DG2) == dg2
    assert repr(dg2) == "DG2(faces=1)"


def test_dg2_accepts_optional_header_elements() -> None:
    # The BHT of the Doc 9303-10 A.3 example (creation date, validity, creator PID), with its
    # length corrected: the printed '26' does not cover the elements printed after it.
    header = h(
        "80 02 0101  81 01 02  83 07 20020315133000  85 08 2002040120070331"
        "  86 04 00010001  87 02 0101  88 02 0008"
    )
    data_block = TINY_DG2[TINY_DG2.index(h("5F2E64")) :]
    bit = tlv(0x7F60, tlv(0xA1, header) + data_block)
    data = tlv(0x75, tlv(0x7F61, h("020101") + bit))
    assert DG2.from_bytes(data) == DG2.from_bytes(TINY_DG2)


def _replace(data: bytes, old: str, new: str) -> bytes:
    assert data.count(h(old)) == 1
    return data.replace(h(old), h(new))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_replace(TINY_DG2, "88020008", "88020007"), "DG2.header"),  # finger image format type
        (_replace(TINY_DG2, "87020101", "8702000A"), "DG2.header"),  # another format owner
        (_replace(TINY_DG2, "810102", "810108"), "DG2.header"),  # says "finger"
        (_replace(TINY_DG2, "7F617E020101", "7F617E020102"), "DG2"),  # two instances
        (_replace(TINY_DG2, "5F2E64", "7F2E64"), "DG2"),  # ISO/IEC 39794 data block
        (_replace(TINY_DG2, "46414300", "46494300"), "DG2.record"),  # 'FIC\0'
        (_replace(TINY_DG2, "00000064", "00000063"), "DG2.record"),  # record length
        (_replace(TINY_DG2, "00000056", "00000057"), "DG2.record"),  # block length
        (_replace(TINY_DG2, "00000056 0000", "00000056 0009"), "DG2.record"),  # 9 feature points
        (_replace(TINY_DG2, "00000064 0001", "00000064 0002"), "DG2.record"),  # two faces
        (TINY_DG2[:-1], "DG2"),  # truncated
    ],
)
def test_dg2_malformed(data: bytes, field: str) -> None:
    with pytest.raises(EncodingError) as info:
        DG2.from_bytes(data)
    assert info.value.field == field


def test_dg2_reads_several_faces_in_one_record() -> None:
    face = FaceImage(TINY_JPEG, quality=77)
    record = h("46414300 30313000 000000BA 0002") + 2 * face.encode()  # 14 + 2 x 86 bytes
    bit = h("A10F 80020101 810102 87020101 88020008") + tlv(0x5F2E, record)
    data = tlv(0x75, tlv(0x7F61, h("020101") + tlv(0x7F60, bit)))
    assert DG2.from_bytes(data).faces == (face, face)


def test_face_image_values() -> None:
    with pytest.raises(EncodingError):
        FaceImage(b"jp2 data", image_data_type=1)  # JPEG 2000 needs its size
    assert FaceImage(b"jp2 data", 10, 20, image_data_type=1).width == 10
    for bad in ({"gender": 256}, {"feature_mask": 1 << 24}, {"pose_angle": (0, 0, 256)},
                {"pose_angle": (0, 0)}, {"quality": -1}, {"width": 1 << 16}):  # fmt: skip
        with pytest.raises(EncodingError) as info:
            FaceImage(TINY_JPEG, **bad)
        assert info.value.field == "DG2.face"
    assert repr(FaceImage(TINY_JPEG)) == "FaceImage(240x320, 54 bytes)"
    with pytest.raises(EncodingError):
        DG2(())


def test_dg2_of_a_15_kb_portrait_is_cheap() -> None:
    portrait = _jpeg(240, 320, noise=True)
    while len(portrait) < 15_000:
        portrait = _jpeg(320, 400, noise=True)
    holder = _holder(portrait_jpeg=portrait)
    rounds = 200
    start = time.perf_counter()
    for _ in range(rounds):
        encoded = DG2.from_holder(holder).to_bytes()
    per_card = (time.perf_counter() - start) / rounds
    assert len(encoded) > len(portrait)
    assert per_card < 1e-3, f"{per_card * 1e6:.0f} us per DG2"


# --- DG3 -----------------------------------------------------------------------------------------

VIEW = FingerView(
    position=7,
    quality=60,
    width=300,
    height=400,
    resolution_ppcm=197,
    minutiae=(Minutia(1, 100, 200, 64, 80), Minutia(2, 0x3FFF, 5, 255, 0)),
)
# Doc 9303-10 4.7.3.2.3 (one instance) with an ISO/IEC 19794-2:2005 record, by hand.
VIEW_DG3 = h(
    "63 4A"
    " 7F61 47"
    "  02 01 01"
    "  7F60 41"
    "   A1 12  80 02 0101  81 01 08  82 01 0A  87 02 0101  88 02 0002"  # 0A: left pointer
    "   5F2E 2A"
    "    464D5200 20323000 0000002A 0000 012C 0190 00C5 00C5 01 00"  # 24-byte header
    "    07 00 3C 02"  # left index, view 0 / live-scan plain, quality 60, two minutiae
    "    4064 00C8 40 50"  # ridge ending at (100, 200), 64 x 360/256 degrees, quality 80
    "    BFFF 0005 FF 00"  # bifurcation at (16383, 5)
    "    0000"  # no extended data
)


def test_dg3_bytes_assembled_by_hand() -> None:
    dg3 = DG3((VIEW,))
    assert dg3.to_bytes() == VIEW_DG3
    assert DG3.from_bytes(VIEW_DG3) == dg3
    assert repr(dg3) == "DG3(fingers=1)"


@pytest.mark.parametrize(
    ("position", "subtype"),
    [(0, 0x00), (1, 0x05), (2, 0x09), (5, 0x15), (6, 0x06), (7, 0x0A), (10, 0x16)],
)
def test_finger_subtypes_of_table_49(position: int, subtype: int) -> None:
    # Table 51/52 examples: left pointer 0A, right pointer 09.
    assert finger_subtype(position) == subtype


def test_dg3_zero_instances() -> None:
    # 9303-10 4.7.3.2.2 table 50: an empty group, optionally with issuer data to vary the hash.
    assert DG3().to_bytes() == h("6306 7F6103 020100")
    with_random = DG3(issuer_data=h("A1B2C3D4"))
    assert with_random.to_bytes() == h("630C 7F6103 020100 5304 A1B2C3D4")
    assert DG3.from_bytes(with_random.to_bytes()) == with_random


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (_replace(VIEW_DG3, "82010A", "820109"), "DG3"),  # subtype says right pointer
        (_replace(VIEW_DG3, "00C5 00C5", "00C5 00C4"), "DG3.record"),  # two resolutions
        (_replace(VIEW_DG3, "464D5200", "46495200"), "DG3.record"),  # 'FIR\0' is an image
        (_replace(VIEW_DG3, "0000002A", "0000002B"), "DG3.record"),
        (_replace(VIEW_DG3, "07 00 3C 02", "07 00 3C 03"), "DG3.record"),  # a missing minutia
        (_replace(VIEW_DG3, "4064", "C064"), "DG3.finger"),  # minutia type 3
        (_replace(VIEW_DG3, "07 00 3C", "0B 00 3C"), "DG3.position"),  # position 11
        (_replace(VIEW_DG3, "88020002", "88020007"), "DG3.header"),
        (h("634B") + VIEW_DG3[2:] + h("00"), "DG3"),  # a stray byte after the group
    ],
)
def test_dg3_malformed(data: bytes, field: str) -> None:
    with pytest.raises(EncodingError) as info:
        DG3.from_bytes(data)
    assert info.value.field == field


def test_dg3_refuses_values_the_record_cannot_hold() -> None:
    for bad in (
        FingerView(7, 101, 300, 400, 197, ()),
        FingerView(7, 60, 1 << 16, 400, 197, ()),
        FingerView(7, 60, 300, 400, 197, (Minutia(1, 1 << 14, 0, 0, 0),)),
        FingerView(7, 60, 300, 400, 197, (Minutia(1, 0, 0, 256, 0),)),
        FingerView(7, 60, 300, 400, 197, (Minutia(1, 0, 0, 0, 101),)),
    ):
        with pytest.raises(EncodingError):
            DG3((bad,))


# --- DG11, DG12 ----------------------------------------------------------------------------------


def test_dg11_of_appendix_a5() -> None:
    vector = EXAMPLES.named("A.5-dg11")
    encoded = printed(vector["printed"])
    assert len(encoded) == 2 + vector["template_length"]
    dg11 = DG11(
        full_name=vector["full_name"],
        place_of_birth=vector["place_of_birth"],
        permanent_address=vector["permanent_address"],
        telephone=vector["telephone"],
        profession=vector["profession"],
    )
    assert dg11.to_bytes() == encoded
    assert DG11.from_bytes(encoded) == dg11


def test_dg11_from_holder_carries_the_chinese_name_in_utf8() -> None:
    dg11 = DG11.from_holder(_holder())
    assert dg11.to_bytes() == h(
        "6B37"
        " 5C08 5F0E 5F10 5F2B 5F11"
        " 5F0E09 E999B3 E5A4A7 E69687"  # 陳大文
        " 5F100A 413132333435362833 29"  # A123456(3)
        " 5F2B08 3139383530333134"  # 19850314
        " 5F1106 E9A699 E6B8AF"  # 香港
    )
    assert repr(dg11) == "DG11(<personal data>)"
    latin = DG11.from_holder(_holder(name_national="", place_of_birth=""))
    assert latin.full_name == "Chan<<Tai<Man" and latin.place_of_birth is None


def test_dg11_other_names_in_the_content_specific_template() -> None:
    dg11 = DG11(full_name="陳大文", other_names=("CHAN<<TAI<MAN", "陳"))
    assert dg11.to_bytes() == h(
        "6B2D 5C04 5F0E 5F0F"
        " 5F0E09 E999B3E5A4A7E69687"
        " A019 020102 5F0F0D 4348414E3C3C5441493C4D414E 5F0F03 E999B3"
    )
    assert DG11.from_bytes(dg11.to_bytes()) == dg11
    # A tag list naming A0 instead of 5F0F, and bare repeated 5F0F, read the same.
    assert DG11.from_bytes(h("6B0B 5C01 A0 A006 020101 5F0F00")).other_names == ("",)
    assert DG11.from_bytes(h("6B0C 5C02 5F0F 5F0F01 41 5F0F01 42")).other_names == ("A", "B")


def test_dates_may_be_bcd() -> None:
    # 9303-10 4.7.12: readers should accept BCD as well as ASCII dates.
    assert DG11.from_bytes(h("6B0B 5C02 5F2B 5F2B04 19850314")).full_date_of_birth == "19850314"
    dg12 = DG12.from_bytes(h("6C0E 5C02 5F55 5F5507 20250314093000"))
    assert dg12.personalization_time == "20250314093000"
    assert dg12.to_bytes() == h("6C15 5C02 5F55 5F550E 3230323530333134303933303030")


def test_dg12_from_holder() -> None:
    dg12 = DG12.from_holder(_holder(issuing_authority="IMMIGRATION DEPARTMENT"))
    assert dg12.to_bytes() == h(
        "6C2A 5C04 5F19 5F26"
        " 5F1916 494D4D4947524154494F4E204445504152544D454E54"
        " 5F2608 3230323530333134"
    )
    assert DG12.from_bytes(dg12.to_bytes()) == dg12


@pytest.mark.parametrize(
    ("cls", "content", "field"),
    [
        (DG11, "5C02 5F0E 5F1001 41", "DG11.tag_list"),  # listed 5F0E, found 5F10
        (DG11, "5F0E01 41 5C00", "DG11.tag_list"),  # no tag list first
        (DG11, "5C02 5F0E 5F9901 41", "DG11"),  # unknown element
        (DG11, "5C02 5F0E 5F0E01 41 5F0E01 42", "DG11.full_name"),  # twice
        (DG11, "5C02 5F0E 5F0E01 FF", "DG11.full_name"),  # not UTF-8
        (DG11, "5C02 5F0F A006 020102 5F0F00", "DG11.other_names"),  # count 2, one name
        (DG11, "5C02 5F0F A006 5F0F00 020101", "DG11.other_names"),  # count not first
        (DG11, "5C02 5F2B 5F2B05 3139383501", "DG11.full_date_of_birth"),  # 5 bytes
        (DG11, "5C02 5F2B 5F2B04 1985031A", "DG11.full_date_of_birth"),  # not BCD
        (DG12, "5C02 5F26 5F2604 202503", "DG12"),  # truncated element
        (DG12, "5C02 5F19 5F1901 41 00", "DG12"),  # a stray byte
    ],
)
def test_tag_list_templates_malformed(cls: type[LDSFile], content: str, field: str) -> None:
    with pytest.raises(EncodingError) as info:
        cls.from_bytes(tlv(cls.tag(), h(content)))
    assert info.value.field == field


def test_tag_list_values_are_checked_on_construction() -> None:
    with pytest.raises(EncodingError) as info:
        DG11(full_date_of_birth="1985-03-14")
    assert info.value.field == "DG11.full_date_of_birth"
    with pytest.raises(EncodingError):
        DG12(personalization_time="2025")
    with pytest.raises(EncodingError):
        DG11(other_names=("x",) * 256)


# --- properties ----------------------------------------------------------------------------------

texts = st.one_of(st.none(), st.text(max_size=40))
digits = st.from_regex(r"[0-9]{8}", fullmatch=True)


@given(
    st.builds(
        DG11,
        full_name=texts,
        other_names=st.lists(st.text(max_size=20), max_size=4).map(tuple),
        personal_number=texts,
        full_date_of_birth=st.one_of(st.none(), digits),
        place_of_birth=texts,
        telephone=texts,
        proof_of_citizenship=st.one_of(st.none(), st.binary(max_size=200)),
        custody_information=texts,
    )
)
def test_dg11_round_trip(dg11: DG11) -> None:
    encoded = dg11.to_bytes()
    assert DG11.from_bytes(encoded) == dg11
    assert DG11.from_bytes(encoded).to_bytes() == encoded


@given(
    st.builds(
        DG12,
        issuing_authority=texts,
        date_of_issue=st.one_of(st.none(), digits),
        other_persons=st.lists(st.text(max_size=20), max_size=3).map(tuple),
        endorsements=texts,
        image_of_front=st.one_of(st.none(), st.binary(max_size=300)),
        personalization_time=st.one_of(st.none(), st.from_regex(r"[0-9]{14}", fullmatch=True)),
        personalization_system_serial=texts,
    )
)
def test_dg12_round_trip(dg12: DG12) -> None:
    encoded = dg12.to_bytes()
    assert DG12.from_bytes(encoded) == dg12
    assert DG12.from_bytes(encoded).to_bytes() == encoded


@given(
    st.lists(st.integers(1, 16), unique=True, max_size=16),
    st.from_regex(r"[0-9]{4}", fullmatch=True),
)
def test_ef_com_round_trip(dgs: list[int], lds: str) -> None:
    com = EFCom.for_data_groups(dgs, lds_version=lds)
    assert EFCom.from_bytes(com.to_bytes()) == com
    assert com.data_groups == tuple(dgs)


@given(
    st.sampled_from([72, 88, 90]).flatmap(
        lambda n: st.text(alphabet="ABCXYZ0189<", min_size=n, max_size=n)
    )
)
def test_dg1_round_trip(mrz: str) -> None:
    assert DG1.from_bytes(DG1(mrz).to_bytes()).mrz == mrz


bytes_0_255 = st.integers(0, 255)
faces = st.builds(
    FaceImage,
    jpeg=st.binary(max_size=300),
    width=st.integers(1, 0xFFFF),
    height=st.integers(1, 0xFFFF),
    gender=bytes_0_255,
    eye_colour=bytes_0_255,
    hair_colour=bytes_0_255,
    feature_mask=st.integers(0, 0xFFFFFF),
    expression=st.integers(0, 0xFFFF),
    pose_angle=st.tuples(bytes_0_255, bytes_0_255, bytes_0_255),
    pose_angle_uncertainty=st.tuples(bytes_0_255, bytes_0_255, bytes_0_255),
    feature_points=st.lists(
        st.builds(
            FeaturePoint, bytes_0_255, bytes_0_255, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)
        ),
        max_size=3,
    ).map(tuple),
    face_image_type=bytes_0_255,
    image_data_type=bytes_0_255,
    colour_space=bytes_0_255,
    source_type=bytes_0_255,
    device_type=st.integers(0, 0xFFFF),
    quality=st.integers(0, 0xFFFF),
)


@given(st.lists(faces, min_size=1, max_size=3).map(tuple))
def test_dg2_round_trip(faces_: tuple[FaceImage, ...]) -> None:
    dg2 = DG2(faces_)
    encoded = dg2.to_bytes()
    assert DG2.from_bytes(encoded) == dg2
    assert DG2.from_bytes(encoded).to_bytes() == encoded


minutiae = st.builds(
    Minutia,
    kind=st.integers(0, 2),
    x=st.integers(0, 0x3FFF),
    y=st.integers(0, 0x3FFF),
    angle=bytes_0_255,
    quality=st.integers(0, 100),
)
views = st.builds(
    FingerView,
    position=st.integers(0, 10),
    quality=st.integers(0, 100),
    width=st.integers(0, 0xFFFF),
    height=st.integers(0, 0xFFFF),
    resolution_ppcm=st.integers(0, 0xFFFF),
    minutiae=st.lists(minutiae, max_size=20).map(tuple),
)


@given(st.lists(views, max_size=4).map(tuple), st.one_of(st.none(), st.binary(max_size=16)))
def test_dg3_round_trip(fingers: tuple[FingerView, ...], issuer_data: bytes | None) -> None:
    dg3 = DG3(fingers, issuer_data)
    encoded = dg3.to_bytes()
    assert DG3.from_bytes(encoded) == dg3
    assert DG3.from_bytes(encoded).to_bytes() == encoded


SAMPLES: list[tuple[type[LDSFile], bytes]] = [
    (EFCom, EFCom().to_bytes()),
    (DG1, h(QUOTED.named("dg1-td1-eriksson")["encoded"])),
    (DG2, TINY_DG2),
    (DG3, VIEW_DG3),
    (DG11, DG11.from_holder(_holder()).to_bytes()),
    (DG12, DG12.from_holder(_holder()).to_bytes()),
]


@given(st.sampled_from(SAMPLES), st.data())
def test_corrupted_files_raise_nothing_but_encoding_error(
    sample: tuple[type[LDSFile], bytes], data: st.DataObject
) -> None:
    cls, encoded = sample
    index = data.draw(st.integers(0, len(encoded) - 1))
    corrupted = data.draw(
        st.one_of(
            st.just(encoded[:index]),
            bytes_0_255.map(lambda b: encoded[:index] + bytes((b,)) + encoded[index + 1 :]),
        )
    )
    with contextlib.suppress(EncodingError):
        cls.from_bytes(corrupted)


@given(st.sampled_from([cls for cls, _ in SAMPLES]), st.binary(max_size=100))
def test_random_bytes_raise_nothing_but_encoding_error(cls: type[LDSFile], data: bytes) -> None:
    with pytest.raises(EncodingError) as info:
        cls.from_bytes(data)
    assert info.value.field is not None
