"""Approved applications: the validated intake model and the JSONL reader.

A malformed record is reported with its line number, field and reason, and the rest of the file goes
on.  Reports never echo the offending value: it may be personal data.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from chip.biometrics import FingerView, Minutia
from chip.errors import EncodingError
from chip.hkid import parse_hkid
from chip.holder import HolderData
from chip.mrz import transliterate

__all__ = ["Application", "Fingerprint", "Rejection", "read_applications"]

MAX_PORTRAIT_BYTES = 64 * 1024
_DOC_NUMBER = re.compile(r"^[A-Z0-9]{1,9}$")
_OFFICE = re.compile(r"^[A-Z0-9][A-Z0-9-]{1,15}$")


def _decode_b64(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("is not valid base64") from exc


Base64Bytes = Annotated[
    bytes, PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str)
]


class Fingerprint(BaseModel):
    """Synthetic or captured finger minutiae (ISO/IEC 19794-2 values)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    position: int = Field(ge=1, le=10)
    quality: int = Field(ge=0, le=100)
    width: int = Field(ge=1, le=4096)
    height: int = Field(ge=1, le=4096)
    resolution_ppcm: int = Field(ge=1, le=1000)
    minutiae: list[tuple[int, int, int, int, int]] = Field(max_length=255)

    @field_validator("minutiae")
    @classmethod
    def _minutiae_in_range(
        cls, value: list[tuple[int, int, int, int, int]]
    ) -> list[tuple[int, int, int, int, int]]:
        for kind, x, y, angle, quality in value:
            if kind not in (0, 1, 2) or not (0 <= x < 16384 and 0 <= y < 16384):
                raise ValueError("minutia type or position out of range")
            if not (0 <= angle <= 255 and 0 <= quality <= 100):
                raise ValueError("minutia angle or quality out of range")
        return value

    def to_view(self) -> FingerView:
        return FingerView(
            position=self.position,
            quality=self.quality,
            width=self.width,
            height=self.height,
            resolution_ppcm=self.resolution_ppcm,
            minutiae=tuple(Minutia(*m) for m in self.minutiae),
        )

    def __repr__(self) -> str:
        return f"Fingerprint(position={self.position}, minutiae={len(self.minutiae)})"


class Application(BaseModel):
    """One approved application for a smart identity card."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    application_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
    hkid: str
    document_number: str
    surname: str = Field(min_length=1, max_length=80)
    given_names: str = Field(default="", max_length=80)
    chinese_name: str = Field(default="", max_length=20)
    chinese_commercial_code: str = Field(default="", pattern=r"^(\d{4}( \d{4})*)?$")
    date_of_birth: date
    sex: Literal["M", "F", "X"]
    place_of_birth: str = Field(default="", max_length=60)
    nationality: str = Field(default="CHN", pattern=r"^[A-Z]{3}$")
    date_of_issue: date
    date_of_expiry: date
    portrait_jpeg: Base64Bytes
    fingerprints: list[Fingerprint] = Field(default_factory=list, max_length=10)
    collection_office: str
    collection_date: date
    approved_at: datetime
    priority: Literal["normal", "urgent", "on_site", "rework"] = "normal"
    #: The collection receipt handed to the applicant at application time; the counter officer
    #: checks it before a cabinet slot opens (issue 6).  Personal data: sealed at rest, and the
    #: cabinet store keeps only a keyed digest of it.
    receipt_number: str | None = Field(default=None, pattern=r"^[A-Z0-9]{8,20}$")

    def __repr__(self) -> str:
        return f"Application(application_id={self.application_id!r})"

    __str__ = __repr__

    @field_validator("portrait_jpeg", mode="before")
    @classmethod
    def _portrait_base64(cls, value: object) -> bytes:
        return _decode_b64(value)

    @field_validator("portrait_jpeg")
    @classmethod
    def _portrait_is_jpeg(cls, value: bytes) -> bytes:
        if not value.startswith(b"\xff\xd8\xff") or not value.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise ValueError("is not a JPEG image (SOI/EOI markers missing)")
        if len(value) > MAX_PORTRAIT_BYTES:
            raise ValueError(f"is larger than {MAX_PORTRAIT_BYTES} bytes")
        return value

    @field_validator("hkid")
    @classmethod
    def _hkid_valid(cls, value: str) -> str:
        try:
            body, check = parse_hkid(value)
        except EncodingError as exc:
            raise ValueError("is not a valid HKIC number (format or check digit)") from exc
        return f"{body}({check})"

    @field_validator("document_number")
    @classmethod
    def _document_number(cls, value: str) -> str:
        if not _DOC_NUMBER.match(value):
            raise ValueError("must be 1 to 9 characters A-Z, 0-9")
        return value

    @field_validator("surname", "given_names")
    @classmethod
    def _latin_name(cls, value: str) -> str:
        if value:
            try:
                transliterate(value)
            except EncodingError as exc:
                raise ValueError("has characters that cannot be written in the MRZ") from exc
        return value

    @field_validator("collection_office")
    @classmethod
    def _office(cls, value: str) -> str:
        if not _OFFICE.match(value):
            raise ValueError("must be an office code (A-Z, 0-9, '-')")
        return value

    @model_validator(mode="after")
    def _dates_consistent(self) -> Application:
        if self.date_of_birth > self.date_of_issue:
            raise ValueError("date_of_birth is after date_of_issue")
        if self.date_of_expiry <= self.date_of_issue:
            raise ValueError("date_of_expiry is not after date_of_issue")
        if self.collection_date < self.approved_at.date():
            raise ValueError("collection_date is before approval")
        return self

    def to_holder(self, *, issuing_state: str = "CHN") -> HolderData:
        """The chip's view of this application (DESIGN §2: chip knows no intake model)."""
        return HolderData(
            document_number=self.document_number,
            surname=self.surname,
            given_names=self.given_names,
            date_of_birth=self.date_of_birth,
            sex=self.sex,
            date_of_expiry=self.date_of_expiry,
            date_of_issue=self.date_of_issue,
            nationality=self.nationality,
            issuing_state=issuing_state,
            personal_number=self.hkid,
            name_national=self.chinese_name,
            chinese_commercial_code=self.chinese_commercial_code,
            place_of_birth=self.place_of_birth,
            portrait_jpeg=self.portrait_jpeg,
            fingers=tuple(f.to_view() for f in self.fingerprints),
        )

    def to_json_line(self) -> str:
        return json.dumps(self.model_dump(mode="json"), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Rejection:
    """A record that was not accepted: where, which field, why (never the value itself)."""

    line: int
    field: str
    reason: str
    application_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "field": self.field,
            "reason": self.reason,
            "application_id": self.application_id,
        }


def _rejections(line_no: int, exc: ValidationError, app_id: str | None) -> list[Rejection]:
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(part) for part in err["loc"]) or "record"
        out.append(Rejection(line_no, loc, str(err["msg"]), app_id))
    return out


def read_applications(path: str | Path) -> Iterator[Application | Rejection]:
    """Yield each line's Application, or its Rejection(s); blank lines are skipped."""
    seen: set[str] = set()
    with Path(path).open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Rejection(line_no, "record", f"not valid JSON (column {exc.colno})")
                continue
            if not isinstance(record, dict):
                yield Rejection(line_no, "record", "not a JSON object")
                continue
            raw_id = record.get("application_id")
            app_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= 40 else None
            try:
                app = Application.model_validate(record)
            except ValidationError as exc:
                yield from _rejections(line_no, exc, app_id)
                continue
            if app.application_id in seen:
                yield Rejection(line_no, "application_id", "duplicate in this file", app_id)
                continue
            seen.add(app.application_id)
            yield app
