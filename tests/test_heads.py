"""The encoder head pool on in-process readers: parallel heads, spoil-and-requeue, heads out of service.

The same pool runs over PC/SC readers in tests/test_pcsc_pool.py; here faults are injected exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from pathlib import Path

import pytest

from chip.emulator import ChipImage, ChipOS, Lifecycle
from chip.errors import CardMuteError, ReaderGoneError
from chip.transport.inprocess import InProcessReader
from personaliser.heads import run_head_pool
from personaliser.synth import synth_applications


class Feeder:
    """Hands out blanks with diversified keys and collects what comes out."""

    def __init__(self, keystore) -> None:  # type: ignore[no-untyped-def]
        self.keystore = keystore
        self.serials = (b"HK" + n.to_bytes(8, "big") for n in itertools.count(1))
        self.lock = threading.Lock()
        self.issued = 0
        self.out: list[ChipOS] = []

    def blank(self) -> ChipOS:
        with self.lock:
            serial = next(self.serials)
            self.issued += 1
        return ChipOS(ChipImage.blank(serial, self.keystore.scp03_keys_for(serial)))

    def collect(self, card: ChipOS) -> None:
        with self.lock:
            self.out.append(card)


class Faulty(InProcessReader):
    """Raises ``fault`` on the APDU numbered ``after`` of every card (counted per card)."""

    def __init__(self, name, feeder, output, fault, after) -> None:  # type: ignore[no-untyped-def]
        super().__init__(name, feeder, output=output)
        self.fault, self.after, self.count = fault, after, 0

    def connect(self) -> bytes:
        self.count = 0
        return super().connect()

    def transmit(self, apdu: bytes) -> bytes:
        self.count += 1
        if self.count == self.after:
            raise self.fault
        return super().transmit(apdu)


@pytest.fixture(scope="module")
def apps():  # type: ignore[no-untyped-def]
    return list(synth_applications(24, seed=21))


def readers(feeder: Feeder, n: int) -> list[InProcessReader]:
    return [InProcessReader(f"head-{i}", feeder.blank, output=feeder.collect) for i in range(n)]


def check_accounting(report, apps, feeder) -> dict:  # type: ignore[no-untyped-def]
    data = report.as_dict()
    passed_ids = [c["application_id"] for c in data["cards"] if c["verdict"] == "PASSED"]
    assert sorted(passed_ids) == sorted(a.application_id for a in apps)  # each exactly once
    assert sum(h["passed"] for h in data["heads"]) == len(apps)
    assert data["stock"]["blanks_used"] == data["stock"]["good"] + data["stock"]["spoiled"]
    assert feeder.issued == data["stock"]["blanks_used"]
    secured = [c for c in feeder.out if c.image.lifecycle is Lifecycle.SECURED]
    assert len({c.image.serial for c in secured}) >= len(apps)
    return data


def test_parallel_heads_share_the_work(tmp_path: Path, keystore, apps) -> None:  # type: ignore[no-untyped-def]
    feeder = Feeder(keystore)
    report = run_head_pool(apps, readers(feeder, 4), keystore, tmp_path)
    data = check_accounting(report, apps, feeder)
    assert data["stock"]["spoiled"] == 0 and data["not_done"] == []
    assert sum(1 for h in data["heads"] if h["passed"] > 0) >= 2
    for h in data["heads"]:
        assert h["in_service"] and (h["passed"] == 0 or h["mean_apdu_ms"] > 0)
    card = data["cards"][0]
    dg1 = (tmp_path / "cards" / card["card_id"] / "DG1").read_bytes()
    assert hashlib.sha256(dg1).digest()  # files of the readback are written


def test_mute_head_spoils_blanks_and_leaves_service(tmp_path: Path, keystore, apps) -> None:  # type: ignore[no-untyped-def]
    feeder = Feeder(keystore)
    heads = readers(feeder, 3)
    heads[0] = Faulty("mute-head", feeder.blank, feeder.collect, CardMuteError("no answer"), 12)
    report = run_head_pool(apps, heads, keystore, tmp_path, max_consecutive_failures=3)
    data = check_accounting(report, apps, feeder)
    mute = next(h for h in data["heads"] if h["reader"] == "mute-head")
    assert not mute["in_service"] and "3 consecutive failures" in mute["out_of_service_reason"]
    assert mute["spoiled"] == 3 and mute["passed"] == 0
    spoils = [s for s in data["spoil_log"] if s["reader"] == "mute-head"]
    assert len(spoils) == 3
    assert all("CardMuteError" in s["reason"] and s["chip_serial"] for s in spoils)


def test_reader_gone_takes_head_out_at_once(tmp_path: Path, keystore, apps) -> None:  # type: ignore[no-untyped-def]
    feeder = Feeder(keystore)
    heads = readers(feeder, 3)
    heads[1] = Faulty("vanishing", feeder.blank, feeder.collect, ReaderGoneError("gone"), 8)
    report = run_head_pool(apps, heads, keystore, tmp_path)
    data = check_accounting(report, apps, feeder)
    gone = next(h for h in data["heads"] if h["reader"] == "vanishing")
    assert not gone["in_service"] and gone["out_of_service_reason"].startswith("reader gone")
    assert gone["spoiled"] == 1 and data["stock"]["spoiled"] == 1


def test_all_heads_failing_leaves_work_not_done(tmp_path: Path, keystore, apps) -> None:  # type: ignore[no-untyped-def]
    feeder = Feeder(keystore)
    heads = [
        Faulty(f"bad-{i}", feeder.blank, feeder.collect, CardMuteError("no answer"), 3)
        for i in range(2)
    ]
    report = run_head_pool(apps[:5], heads, keystore, tmp_path, max_consecutive_failures=2)
    data = report.as_dict()
    assert data["cards_passed"] == 0
    assert sorted(data["not_done"]) == sorted(a.application_id for a in apps[:5])
    assert data["stock"]["spoiled"] == 4 == feeder.issued
