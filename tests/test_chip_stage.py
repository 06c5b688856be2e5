"""The chip stage end to end, through the CLI: personalise, read back, verify with independent tools."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from chip.lds.sod import EFSod
from chip.tlv import unwrap
from personaliser.cli import main
from personaliser.synth import synth_applications

OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`perso keys init`, `perso applications synth 8`, one malformed record, `perso chip personalise`."""
    base = tmp_path_factory.mktemp("stage")
    assert main(["keys", "init", "--dir", str(base / "keys")]) == 0
    lines = [app.to_json_line() for app in synth_applications(8, seed=3)]
    bad = json.loads(lines[0])
    bad["application_id"] = "APP-BAD-1"
    bad["hkid"] = "A123456(4)"  # wrong check digit
    lines.insert(2, json.dumps(bad))
    (base / "apps.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = main(
        ["chip", "personalise", "--applications", str(base / "apps.jsonl"),
         "--keys", str(base / "keys"), "--out", str(base / "out")]
    )  # fmt: skip
    assert code == 3  # every card passed, one record rejected
    return base / "out"


def report(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "report.json").read_text())


def test_report_counts_and_rejection(run: Path) -> None:
    data = report(run)
    assert data["cards_personalised"] == 8
    assert data["cards_passed"] == 8
    assert data["cards_failed"] == 0
    assert data["rejections"] == [
        {"line": 3, "field": "hkid", "reason": data["rejections"][0]["reason"],
         "application_id": "APP-BAD-1"}
    ]  # fmt: skip
    assert "check digit" in data["rejections"][0]["reason"]
    for card in data["cards"]:
        assert card["verdict"] == "PASSED" and card["reasons"] == []
        assert card["apdus"] > 0 and card["bytes_written"] > 10_000


def test_hashes_in_sod_equal_sha256_of_files(run: Path) -> None:
    for card in report(run)["cards"]:
        card_dir = run / "cards" / card["card_id"]
        sod = EFSod.from_bytes((card_dir / "EF.SOD").read_bytes())
        assert set(sod.dg_hashes) == {1, 2, 3, 11, 12}
        for dg, digest in sod.dg_hashes.items():
            assert hashlib.sha256((card_dir / f"DG{dg}").read_bytes()).digest() == digest
        assert (card_dir / "chip.img").is_file()
        assert (card_dir / "EF.COM").is_file()


@pytest.mark.integration
def test_openssl_cms_verifies_every_sod(run: Path, tmp_path: Path) -> None:
    assert OPENSSL is not None, "openssl is a test dependency (make test installs it)"
    csca = run / "pki" / "csca.pem"
    assert csca.is_file() and (run / "pki" / "ds.pem").is_file()
    assert "PRIVATE" not in csca.read_text()
    for card in report(run)["cards"]:
        sod = (run / "cards" / card["card_id"] / "EF.SOD").read_bytes()
        cms = tmp_path / "sod.der"
        cms.write_bytes(unwrap(sod, 0x77))
        proc = subprocess.run(
            [OPENSSL, "cms", "-verify", "-inform", "DER", "-in", str(cms), "-CAfile", str(csca),
             "-purpose", "any", "-out", str(tmp_path / "content.der")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert "Verification successful" in proc.stderr
        content = (tmp_path / "content.der").read_bytes()
        assert content == EFSod.from_bytes(sod).lds_security_object_der


def test_missing_keystore_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    apps = tmp_path / "apps.jsonl"
    apps.write_text("")
    code = main(["chip", "personalise", "--applications", str(apps), "--keys",
                 str(tmp_path / "nokeys"), "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "keystore" in capsys.readouterr().err


def test_keys_init_refuses_to_overwrite(tmp_path: Path) -> None:
    assert main(["keys", "init", "--dir", str(tmp_path / "k")]) == 0
    before = (tmp_path / "k" / "ds.key").read_bytes()
    assert main(["keys", "init", "--dir", str(tmp_path / "k")]) == 2
    assert (tmp_path / "k" / "ds.key").read_bytes() == before
    for name in ("csca.key", "ds.key", "perso-master.key"):
        assert (tmp_path / "k" / name).stat().st_mode & 0o777 == 0o600
