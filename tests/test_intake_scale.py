"""Issue 5 acceptance: 1,000 applications with 5 % malformed records; every bad one is reported with its
field, none of the good ones is lost, and importing again adds nothing."""

from __future__ import annotations

import json
import random
from pathlib import Path

from personaliser.lifecycle import State
from personaliser.operations import Home, import_applications
from personaliser.synth import synth_applications

CORRUPTIONS = [
    ("hkid", "Z999999(1)"),  # (Z999999(0) would be valid)
    ("date_of_birth", "1990-13-01"),
    ("sex", "?"),
    ("document_number", "lower-case"),
    ("portrait_jpeg", "bm90IGEganBlZw=="),
    ("collection_office", "not an office"),
    ("surname", ""),
    ("nationality", "Hong Kong"),
]


def test_thousand_with_five_percent_malformed(tmp_path: Path) -> None:
    rng = random.Random(5)
    # 40 distinct synthetic people (portraits are the slow part), each applying 25 times.
    people = [json.loads(a.to_json_line()) for a in synth_applications(40, seed=77)]
    records = [people[i % 40] | {"application_id": f"APP-SCALE-{i:05d}"} for i in range(1000)]
    bad_lines: dict[int, str] = {}
    for index in rng.sample(range(1000), 50):
        field, value = CORRUPTIONS[len(bad_lines) % len(CORRUPTIONS)]
        records[index][field] = value
        bad_lines[index + 1] = field
    path = tmp_path / "apps.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    home = Home(tmp_path / "home")
    with home.open_store(home.ensure()) as store:
        counts, rejections = import_applications(store, path)
        assert counts.new == 950 and counts.rejected == 50
        reported = {r.line: r.field for r in rejections}
        assert reported == bad_lines  # each malformed line, with the field at fault
        good = {r["application_id"] for i, r in enumerate(records, 1) if i not in bad_lines}
        stored = {a.application_id for a in store.list_applications(state=State.APPROVED)}
        assert stored == good  # none of the good ones lost
        again, _ = import_applications(store, path)
        assert again.new == 0 and again.duplicate == 950
