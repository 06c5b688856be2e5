"""Application intake: validation with line, field and reason; synthetic applications."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from chip.hkid import is_valid_hkid
from personaliser.applications import Application, Rejection, read_applications
from personaliser.cli import main
from personaliser.synth import synth_applications


@pytest.fixture(scope="module")
def good() -> dict:  # type: ignore[type-arg]
    return json.loads(next(synth_applications(1, seed=11)).to_json_line())


def write(path: Path, records: list[object]) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"hkid": "A123456(4)"}, "hkid", "check digit"),
        ({"document_number": "hk-123"}, "document_number", "A-Z"),
        ({"date_of_birth": "1990-02-30"}, "date_of_birth", "date"),
        ({"sex": "Q"}, "sex", "'M'"),
        ({"portrait_jpeg": base64.b64encode(b"GIF89a....").decode()}, "portrait_jpeg", "JPEG"),
        ({"portrait_jpeg": "***"}, "portrait_jpeg", "base64"),
        ({"surname": "Дмитрий"}, "surname", "MRZ"),
        ({"collection_office": "office 1"}, "collection_office", "office code"),
        ({"unexpected": 1}, "unexpected", "not permitted"),
    ],
)
def test_bad_field_is_named(
    tmp_path: Path, good: dict, change: dict, field: str, words: str
) -> None:  # type: ignore[type-arg]
    record = {**good, **change}
    items = list(
        read_applications(write(tmp_path / "a.jsonl", [good | {"application_id": "A1"}, record]))
    )
    assert isinstance(items[0], Application)
    rejections = [i for i in items if isinstance(i, Rejection)]
    assert [(r.line, r.field) for r in rejections] == [(2, field)]
    assert words in rejections[0].reason
    secret = str(change.get(field, ""))
    if len(secret) > 3:
        assert secret not in rejections[0].reason  # the value itself is never echoed


def test_missing_field_and_broken_lines(tmp_path: Path, good: dict) -> None:  # type: ignore[type-arg]
    missing = {k: v for k, v in good.items() if k != "date_of_expiry"}
    missing["application_id"] = "A2"
    items = list(
        read_applications(write(tmp_path / "a.jsonl", ["{not json", "[1, 2]", missing, "", good]))
    )
    rejected = [(i.line, i.field) for i in items if isinstance(i, Rejection)]
    assert rejected == [(1, "record"), (2, "record"), (3, "date_of_expiry")]
    assert [i.application_id for i in items if isinstance(i, Application)] == [
        good["application_id"]
    ]


def test_duplicate_id_in_file(tmp_path: Path, good: dict) -> None:  # type: ignore[type-arg]
    items = list(read_applications(write(tmp_path / "a.jsonl", [good, good])))
    assert isinstance(items[0], Application)
    assert isinstance(items[1], Rejection) and items[1].field == "application_id"


def test_inconsistent_dates(tmp_path: Path, good: dict) -> None:  # type: ignore[type-arg]
    bad = good | {"date_of_expiry": good["date_of_issue"]}
    (item,) = read_applications(write(tmp_path / "a.jsonl", [bad]))
    assert isinstance(item, Rejection) and "date_of_expiry" in item.reason


def test_repr_hides_personal_data(good: dict) -> None:  # type: ignore[type-arg]
    app = Application.model_validate(good)
    for text in (repr(app), str(app), repr(app.to_holder())):
        assert good["surname"] not in text and good["hkid"] not in text


def test_synth_cli_writes_valid_varied_applications(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["applications", "synth", "12", "--seed", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 12
    apps = [Application.model_validate_json(line) for line in lines]
    assert len({a.application_id for a in apps}) == 12
    assert len({a.portrait_jpeg for a in apps}) == 12
    for app in apps:
        assert 10_000 <= len(app.portrait_jpeg) <= 20_000
        assert is_valid_hkid(app.hkid)
        assert app.chinese_name and app.surname and app.fingerprints
    assert main(["applications", "synth", "12", "--seed", "5"]) == 0
    assert capsys.readouterr().out.splitlines() == lines  # reproducible by seed
