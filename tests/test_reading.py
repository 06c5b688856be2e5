"""Reading a card like a border reader (in process; the PC/SC version is in tests/test_pcsc_*.py)."""

from __future__ import annotations

from chip.transport.inprocess import InProcessReader
from personaliser.chipstage import personalise_card
from personaliser.reading import (
    MrzKey,
    describe,
    mrz_keys_from_applications,
    read_with_mrz,
    unprotected_read_refused,
)


def test_right_mrz_reads_wrong_mrz_denied(keystore, applications) -> None:  # type: ignore[no-untyped-def]
    _outcome, chip, _verdict, plan = personalise_card(applications[3], keystore)
    reader = InProcessReader("test", lambda: chip)
    anchors = [keystore.csca_certificate()]
    keys = mrz_keys_from_applications(applications)
    result = read_with_mrz(reader, keys, trust_anchors=anchors)
    assert result.verdict is not None and result.verdict.passed
    assert result.key is not None and result.key.label == applications[3].application_id
    assert result.tried == 4
    assert result.verdict.readout.files["DG1"] == plan.file("DG1")
    lines = describe(result)
    assert lines[0] == "verdict: PASSED" and plan.mrz.lines[0] in "\n".join(lines)

    wrong = [MrzKey("XX1234567", "800101", "300101")]
    denied = read_with_mrz(reader, wrong, trust_anchors=anchors)
    assert denied.access_denied and denied.tried == 1
    assert describe(denied)[0].startswith("ACCESS DENIED")
    assert "XX1234567" not in repr(wrong[0])

    assert unprotected_read_refused(reader)
