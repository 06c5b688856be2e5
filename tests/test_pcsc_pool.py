"""Acceptance of the encoder head pool through the real stack: pyscard → pcscd → vpcd → emulator."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from chip.emulator import ChipImage, Lifecycle
from chip.tlv import unwrap
from chip.transport.pcsc import PcscTransport, list_readers
from personaliser.cli import main
from personaliser.heads import run_head_pool
from personaliser.serve import BlankFeeder, FaultPolicy
from personaliser.synth import synth_applications

OPENSSL = shutil.which("openssl")


def test_eight_heads_personalise_and_verify_200_cards(
    tmp_path: Path, reader_pool, keystore, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    apps = list(synth_applications(200, seed=42))
    (tmp_path / "apps.jsonl").write_text("".join(a.to_json_line() + "\n" for a in apps))
    with reader_pool.lease(8) as slots:
        feeder = BlankFeeder(8, slots[0].port, keystore, tmp_path / "feeder")
        with feeder:
            prefix = "Perso VPCD"  # tests/pcscd.py names every test reader with this prefix
            assert all(s.reader.startswith(prefix) for s in slots)
            assert len(list_readers(prefix)) == 8  # the CLI's --readers matches exactly these
            code = main(
                ["chip", "personalise", "--applications", str(tmp_path / "apps.jsonl"),
                 "--keys", str(keystore.path), "--out", str(tmp_path / "out"), "--readers", prefix]
            )  # fmt: skip
            assert code == 0, capsys.readouterr()
            feeder.wait_until(lambda: feeder.totals()["completed"] >= 200, 10)
        totals = feeder.totals()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["cards_passed"] == 200 and report["not_done"] == []
    heads = report["heads"]
    assert len(heads) == 8
    assert sum(h["passed"] for h in heads) == 200
    assert sum(1 for h in heads if h["passed"]) >= 4  # the work was shared
    assert all(h["mean_apdu_ms"] < 10 for h in heads if h["apdus"])
    ids = [c["application_id"] for c in report["cards"]]
    assert sorted(ids) == sorted(a.application_id for a in apps)  # each exactly once
    serials = {c["chip_serial"] for c in report["cards"]}
    assert len(serials) == 200
    # Nothing written twice: the feeder saw exactly 200 cards finished, each a distinct serial.
    assert totals["completed"] == 200 and totals["spoiled"] == report["stock"]["spoiled"] == 0
    images = sorted((tmp_path / "feeder").glob("*.img"))
    assert {p.stem for p in images} == serials
    assert ChipImage.load(images[0]).lifecycle is Lifecycle.SECURED
    assert OPENSSL is not None, "openssl is a test dependency (make test installs it)"
    csca = tmp_path / "out" / "pki" / "csca.pem"
    for card in report["cards"]:
        sod = (tmp_path / "out" / "cards" / card["card_id"] / "EF.SOD").read_bytes()
        (tmp_path / "sod.der").write_bytes(unwrap(sod, 0x77))
        proc = subprocess.run(
            [OPENSSL, "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "sod.der"),
             "-CAfile", str(csca), "-purpose", "any", "-out", "/dev/null"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr


def faults(slot: int, card: int) -> FaultPolicy | None:
    if (slot, card) == (0, 1):
        return FaultPolicy(drop_after_apdus=40)  # the emulator drops the link mid-personalisation
    if (slot, card) == (1, 1):
        return FaultPolicy(pull_on_write=3)  # the card is pulled during a write
    if (slot, card) == (2, 2):
        return FaultPolicy(mute_after_apdus=25)  # the card stops answering
    return None


def test_faults_spoil_one_blank_each_and_the_run_completes(
    tmp_path: Path, reader_pool, keystore
) -> None:  # type: ignore[no-untyped-def]
    apps = list(synth_applications(12, seed=43))
    with reader_pool.lease(3) as slots:
        feeder = BlankFeeder(
            3, slots[0].port, keystore, tmp_path / "feeder", faults=faults, mute_timeout_s=0.5
        )
        with feeder:
            transports = [PcscTransport(s.reader, timeout_s=5.0) for s in slots]
            report = run_head_pool(apps, transports, keystore, tmp_path / "out")
            for t in transports:
                t.close()
            feeder.wait_until(lambda: feeder.totals()["spoiled"] >= 3, 10)
        totals = feeder.totals()
    data = report.as_dict()
    assert data["cards_passed"] == 12 and data["not_done"] == []
    assert sorted(c["application_id"] for c in data["cards"]) == sorted(
        a.application_id for a in apps
    )
    spoils = data["spoil_log"]
    assert len(spoils) == 3 == data["stock"]["spoiled"]
    assert {s["reader"] for s in spoils} == {s.reader for s in slots}
    reasons = " | ".join(s["reason"] for s in spoils)
    assert "CardRemovedError" in reasons or "CardMuteError" in reasons
    assert all(h["in_service"] for h in data["heads"])  # one failure each is not enough to retire
    # The feeder accounts for the same three blanks and kept their images.
    assert totals["spoiled"] == 3 and totals["completed"] == 12
    assert len(list((tmp_path / "feeder" / "spoiled").glob("*.img"))) == 3
    assert data["stock"]["blanks_used"] == 15
