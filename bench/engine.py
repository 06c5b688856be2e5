"""Engine cost: host CPU per card with zero-latency in-process devices, next to the crypto floor.

The floor is what no implementation of one card can avoid (as ``tests/bench/test_bench_chip.py``
``test_card_crypto_floor`` measures it): the EF.SOD signature, a hash per LDS file, and one
encrypt + MAC pass over the bytes written (SCP03: AES-CBC + CMAC, GlobalPlatform Card Spec v2.3
Amd D) and read back (BAC: 3DES-CBC + retail MAC, ICAO Doc 9303 Part 11, 9.8).  Both are measured
in the same process and run so that their ratio, not either bare number, is the figure to compare
across hosts.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from chip.crypto.aes import aes_cbc_encrypt, aes_cmac
from chip.crypto.des import retail_mac, tdes_encrypt
from chip.crypto.padding import pad
from chip.perso import build_plan
from personaliser.keystore import FileKeystore
from personaliser.line import LineReport, LineSettings, run_line
from personaliser.operations import Home, import_applications, plan, start_batches, start_of
from personaliser.synth import synth_applications
from scheduler import LineConfig

__all__ = ["EngineResult", "crypto_floor_ms", "measure_engine", "prepare_home"]

#: The synthetic applications' approval day (as ``perso demo`` plans them).
TODAY = date(2026, 11, 2)


@dataclass(frozen=True, slots=True)
class EngineResult:
    cards: int
    cards_passed: int
    cpu_s: float
    wall_s: float
    floor_ms_per_card: float

    @property
    def ms_per_card(self) -> float:
        return 1000.0 * self.cpu_s / self.cards_passed if self.cards_passed else float("inf")

    @property
    def cards_per_hour_per_core(self) -> float:
        return 3_600_000.0 / self.ms_per_card if self.cards_passed else 0.0

    @property
    def ratio_to_floor(self) -> float:
        return self.ms_per_card / self.floor_ms_per_card

    def as_dict(self) -> dict[str, Any]:
        return {
            "cards": self.cards,
            "cards_passed": self.cards_passed,
            "cpu_s": round(self.cpu_s, 3),
            "wall_s": round(self.wall_s, 3),
            "engine_ms_per_card": round(self.ms_per_card, 3),
            "floor_ms_per_card": round(self.floor_ms_per_card, 3),
            "ratio_to_floor": round(self.ratio_to_floor, 2),
            "cards_per_hour_per_core": round(self.cards_per_hour_per_core),
            "target_cards_per_hour_per_core": 200_000,
            "target_ratio_to_floor": 3.0,
        }


def prepare_home(root: Path, cards: int, *, seed: int = 0) -> tuple[Home, FileKeystore]:
    """A fresh home under ``root`` with ``cards`` synthetic applications planned and queued."""
    home = Home(root / "home")
    keystore = home.ensure()
    apps_file = root / "applications.jsonl"
    apps_file.write_text("".join(_application_lines(cards, seed)), encoding="utf-8")
    with home.open_store(keystore) as store:
        import_applications(store, apps_file)
        the_plan, _ = plan(
            store,
            today=TODAY,
            line=LineConfig(cards_per_hour=1000, hours_per_day=8, tray_size=50),
            start=start_of(TODAY),
        )
        start_batches(store, the_plan, None)
    return home, keystore


_synthesised: dict[int, list[str]] = {}


def _application_lines(count: int, seed: int) -> list[str]:
    """JSONL lines of synthetic applications, kept between parts: a synthetic portrait costs
    ~30 ms, which is set-up, not what is measured.  The first n of a seed's sequence are the same
    whatever the count, so the longest list serves every shorter one."""
    lines = _synthesised.get(seed, [])
    if len(lines) < count:
        lines = [app.to_json_line() + "\n" for app in synth_applications(count, seed=seed)]
        _synthesised[seed] = lines
    return lines[:count]


def crypto_floor_ms(keystore: FileKeystore, *, rounds: int, seed: int = 0) -> float:
    """CPU milliseconds of one card's unavoidable crypto, averaged over ``rounds``."""
    app = next(synth_applications(1, seed=seed))
    signer = keystore.document_signer()
    card_plan = build_plan(app.to_holder(), signer)
    files = [f.data for f in card_plan.files]
    payload = b"".join(files)
    aes_key, des_key = os.urandom(16), os.urandom(16)
    padded16, padded8 = pad(payload, 16), pad(payload, 8)

    def floor() -> bytes:
        for data in files:
            hashlib.sha256(data).digest()
        signer.sign(payload[:200])
        aes_cmac(aes_key, aes_cbc_encrypt(aes_key, padded16, bytes(16)))
        return retail_mac(des_key, tdes_encrypt(des_key, padded8), padded=True)

    floor()  # warm the key objects and the signer's caches, as the line's first card does
    start = time.process_time()
    for _ in range(rounds):
        floor()
    return 1000.0 * (time.process_time() - start) / rounds


def engine_settings() -> LineSettings:
    """Zero-latency in-process devices.  Faces are not rendered: the printer renders them on a
    real line, and ``tests/bench/test_bench_raster.py`` measures that apart."""
    return LineSettings.model_validate({"printers": {"render": "never"}})


def measure_engine(cards: int, *, floor_rounds: int = 50, seed: int = 0) -> EngineResult:
    with tempfile.TemporaryDirectory(prefix="perso-bench-") as tmp:
        root = Path(tmp)
        home, keystore = prepare_home(root, cards, seed=seed)
        with home.open_store(keystore) as store:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            report: LineReport = asyncio.run(
                run_line(store, keystore, engine_settings(), out_dir=root / "out")
            )
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        floor = crypto_floor_ms(keystore, rounds=floor_rounds, seed=seed)
    return EngineResult(cards, report.cards_passed, cpu, wall, floor)
