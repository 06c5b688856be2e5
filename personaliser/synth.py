"""Synthetic approved applications for demos, tests and benchmarks (no real person's data).

Names are common Hong Kong surnames and given-name characters with their Cantonese (HK government)
romanisation; portraits are drawn procedurally (a head-and-shoulders figure with noise so the JPEG
carries a realistic 10–20 KB); fingerprints are random minutiae in ISO/IEC 19794-2 ranges.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from chip.hkid import format_hkid
from personaliser.applications import Application, Fingerprint

__all__ = ["OFFICES", "synth_applications", "synth_portrait"]

SURNAMES = (
    ("CHAN", "陳"), ("WONG", "黃"), ("LEE", "李"), ("CHEUNG", "張"), ("LAU", "劉"),
    ("NG", "吳"), ("LAM", "林"), ("HO", "何"), ("LEUNG", "梁"), ("TSANG", "曾"),
    ("CHOW", "周"), ("YEUNG", "楊"), ("TANG", "鄧"), ("FUNG", "馮"), ("KWOK", "郭"),
    ("MA", "馬"), ("LO", "羅"), ("CHU", "朱"), ("YIP", "葉"), ("CHOI", "蔡"),
)  # fmt: skip
GIVEN = (
    ("TAI", "大"), ("MAN", "文"), ("WAI", "偉"), ("MING", "明"), ("MEI", "美"),
    ("LING", "玲"), ("KA", "嘉"), ("YAN", "欣"), ("CHI", "志"), ("KEUNG", "強"),
    ("SZE", "詩"), ("WING", "穎"), ("CHUN", "俊"), ("KIT", "傑"), ("LAI", "麗"),
    ("FONG", "芳"), ("KWOK", "國"), ("WAH", "華"), ("TSZ", "子"), ("HO", "浩"),
    ("LAM", "霖"), ("TING", "婷"), ("NGA", "雅"), ("KEI", "琪"), ("TAK", "德"),
    ("FAI", "輝"), ("YEE", "儀"), ("HEI", "希"), ("LOK", "樂"), ("SHING", "成"),
)  # fmt: skip
#: Registration of Persons offices of the Immigration Department (collection offices).
OFFICES = ("ROP-HKI", "ROP-KLN", "ROP-KT", "ROP-TM", "ROP-ST", "ROP-YL")
PLACES = ("HONG KONG", "KOWLOON", "GUANGDONG", "MACAO", "NEW TERRITORIES")

PORTRAIT_SIZE = (360, 480)
PORTRAIT_BYTES = (10_000, 20_000)


def synth_portrait(rng: random.Random) -> bytes:
    """A head-and-shoulders JPEG of 10–20 KB, different for every seed."""
    w, h = PORTRAIT_SIZE
    img = Image.new("RGB", (w, h), (226, 232, 240))
    draw = ImageDraw.Draw(img)
    skin = rng.choice(((241, 205, 176), (224, 182, 150), (198, 150, 118), (232, 196, 160)))
    hair = rng.choice(((20, 18, 18), (45, 32, 25), (70, 55, 40), (110, 110, 110)))
    cloth = tuple(rng.randrange(20, 160) for _ in range(3))
    cx = w // 2 + rng.randrange(-12, 13)
    face_w, face_h = rng.randrange(140, 170), rng.randrange(185, 215)
    top = 95 + rng.randrange(-10, 10)
    draw.ellipse((cx - 150, h - 130, cx + 150, h + 120), fill=cloth)  # shoulders
    draw.rectangle((cx - 35, top + face_h - 30, cx + 35, h - 100), fill=skin)  # neck
    draw.ellipse(
        (cx - face_w // 2 - 8, top - 25, cx + face_w // 2 + 8, top + face_h // 2), fill=hair
    )
    draw.ellipse((cx - face_w // 2, top, cx + face_w // 2, top + face_h), fill=skin)
    eye_y = top + face_h * 2 // 5
    for dx in (-face_w // 5, face_w // 5):
        draw.ellipse((cx + dx - 13, eye_y - 7, cx + dx + 13, eye_y + 7), fill=(250, 250, 250))
        draw.ellipse((cx + dx - 6, eye_y - 6, cx + dx + 6, eye_y + 6), fill=(40, 30, 25))
        draw.line((cx + dx - 16, eye_y - 18, cx + dx + 16, eye_y - 20), fill=hair, width=5)
    nose_y = eye_y + face_h // 5
    draw.line((cx, eye_y + 8, cx - 6, nose_y, cx + 4, nose_y), fill=(150, 100, 80), width=3)
    mouth_y = nose_y + face_h // 7
    draw.arc((cx - 25, mouth_y - 10, cx + 25, mouth_y + 10), 15, 165, fill=(150, 60, 60), width=4)
    img = img.filter(ImageFilter.GaussianBlur(1.2))
    pixels = np.asarray(img, dtype=np.int16)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 6, pixels.shape)
    img = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    return _jpeg_within(img, *PORTRAIT_BYTES)


def _jpeg_within(img: Image.Image, low: int, high: int) -> bytes:
    """Binary-search the JPEG quality so the file lands within [low, high] bytes."""
    lo, hi = 5, 95
    best = b""
    while lo <= hi:
        quality = (lo + hi) // 2
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality, optimize=True)
        data = buf.getvalue()
        if len(data) > high:
            hi = quality - 1
        else:
            best = data
            if len(data) >= low:
                return data
            lo = quality + 1
    return best


def _fingerprints(rng: random.Random) -> list[Fingerprint]:
    fingers = []
    for position in (2, 7):  # right and left index fingers (ISO/IEC 19794-2 table 2)
        minutiae = [
            (
                rng.choice((1, 2)),
                rng.randrange(20, 480),
                rng.randrange(20, 480),
                rng.randrange(0, 256),
                rng.randrange(40, 101),
            )
            for _ in range(rng.randrange(25, 45))
        ]
        fingers.append(
            Fingerprint(
                position=position,
                quality=rng.randrange(60, 101),
                width=500,
                height=500,
                resolution_ppcm=197,  # 500 dpi
                minutiae=minutiae,
            )
        )
    return fingers


def _add_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


def _hkid_body(rng: random.Random) -> str:
    letters = "ABCDEGHKMPRVYZ"
    prefix = rng.choice(letters) if rng.random() < 0.9 else rng.choice("WX") + rng.choice(letters)
    return prefix + f"{rng.randrange(10**6):06d}"


def synth_applications(
    count: int, *, seed: int = 0, approved_on: date | None = None
) -> Iterator[Application]:
    """``count`` valid, varied applications, reproducible for a given seed."""
    rng = random.Random(seed)
    day = approved_on or date(2026, 11, 2)
    for n in range(count):
        surname, surname_zh = rng.choice(SURNAMES)
        given = [rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2, 2)))]
        birth = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 68 * 365))
        approved = datetime.combine(day, time(9, 0), tzinfo=UTC) + timedelta(
            minutes=rng.randrange(0, 8 * 60)
        )
        yield Application(
            application_id=f"APP-{seed:04d}-{n + 1:06d}",
            hkid=format_hkid(_hkid_body(rng)),
            document_number=f"HK{rng.randrange(10**7):07d}",
            surname=surname,
            given_names=" ".join(g for g, _ in given),
            chinese_name=surname_zh + "".join(z for _, z in given),
            date_of_birth=birth,
            sex=rng.choice(("M", "F")),
            place_of_birth=rng.choice(PLACES),
            date_of_issue=day,
            date_of_expiry=_add_years(day, 10),
            portrait_jpeg=synth_portrait(rng),
            fingerprints=_fingerprints(rng),
            collection_office=rng.choice(OFFICES),
            collection_date=day + timedelta(days=9),
            approved_at=approved,
            priority=rng.choices(("normal", "urgent", "on_site"), weights=(90, 7, 3))[0],
            receipt_number=_receipt_number(seed, n),
        )


def _receipt_number(seed: int, n: int) -> str:
    """A 12-character receipt number.  Its own generator, so that adding it left every other
    synthetic field of a seed as it was."""
    rng = random.Random(f"receipt:{seed}:{n}")
    return "R" + "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(11))
