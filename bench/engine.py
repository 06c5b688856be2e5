"""Engine cost: host CPU per card with zero-latency in-process devices, next to the crypto floor.

The floor is what no implementation of one card can avoid (``bench.floor``): the *protocol floor*,
every cryptographic operation the standards prescribe for the host (SCP03 keys, cryptograms and
per-command C-DECRYPTION + C-MAC; BAC keys, mutual authentication and per-APDU secure messaging;
the EF.SOD signature and hashes; passive authentication's hashes and signature check) at the
message sizes the line uses, replayed through the primitives with no protocol logic.  The *bulk
floor* (one signature, one hash per file, one encrypt + MAC pass over all bytes written and read,
as ``tests/bench/test_bench_chip.py`` ``test_card_crypto_floor``) is a lower bound no protocol
reaches; it is reported too (``ratio_to_bulk_floor``).  Both are measured in the same process and
run as the line so that the ratios, not the bare numbers, are the figures to compare across hosts;
the floors' rounds are split before and after the run, since on a shared host the CPU's speed
drifts.

What is measured, and why it is split three ways:

- The whole line runs (``personaliser.line.run_line``: store transitions, LDS and EF.SOD, the perso
  script, printing on a zero-latency station, QA readback with passive authentication, outputs)
  on one fresh SQLite store with the store's defaults (WAL; ``SqliteStore.sync``, reported as
  ``store_sync``), and the process's CPU time over the run is taken.  The set-up's garbage is
  collected before the clock starts.
- Part of that CPU is not the host's.  The in-process chips answer every APDU on the host's CPU:
  the card side of SCP03 and of BAC 3DES secure messaging, a real line's chip silicon.  The
  emulator meters it (``chip.emulator.DEVICE_CPU``: each APDU's processing, and the feeder making a
  blank, as a section of the calling thread's CPU time; ``time.thread_time`` and not
  ``process_time``, so that the figure stays right with ``host_threads``, where other threads run
  host work at the same moment).  It is reported as ``device_ms_per_card``, not hidden.  What
  the meter cannot take out: the emulator shares the host's caches, so the host runs somewhat
  slower than it would next to a real chip (about a tenth, measured by replaying recorded
  answers with and without the emulator working in between).
- Face rendering is the printer's work and is measured apart (``tests/bench/test_bench_raster.py``):
  the line is run with ``render = "never"``, and the proofs the line still renders (the first card
  of every tray, DESIGN §5 QA) are metered like the device (``personaliser.line.stations.RENDER_CPU``)
  and reported as ``render_ms_per_card``.
- ``engine_ms_per_card`` is the rest: the host's own work.  ``ratio_to_floor`` and
  ``cards_per_hour_per_core`` are computed from it; ``total_ms_per_card`` (and
  ``total_ratio_to_floor``) is everything the process spent, device and rendering included.

Outputs: what a production line needs to write (:data:`OUTPUTS`, reported as ``outputs``): the
trays, in delivery order, for every finished batch.  Not the chip files as read back
(``output.chip_files``): they are the personal data in clear (MRZ, portrait, fingerprints) on disk,
which a production line has no use for and data minimisation (DESIGN §3) argues against; ``perso
demo`` and the tests keep them.  Not the emulator's chip image (``output.chip_image``): a real
chip has no image to save.  On the development host each file created costs 0.1 to 0.5 ms of
kernel CPU, so writing them (seven files and a folder per card) would cost more than the floor.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from bench.floor import bulk_floor_ms, protocol_floor_ms, record_profile
from chip.emulator import DEVICE_CPU
from personaliser.keystore import FileKeystore
from personaliser.line import LineReport, LineSettings, run_line
from personaliser.line.stations import RENDER_CPU
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
    cpu_s: float  # the process's CPU over the run
    wall_s: float
    floor_ms_per_card: float  # the protocol floor (bench.floor)
    bulk_floor_ms_per_card: float = 0.0
    device_s: float = 0.0  # of cpu_s: inside the emulated chips (DEVICE_CPU)
    render_s: float = 0.0  # of cpu_s: rendering proofs (RENDER_CPU)
    store_sync: str = "full"  # which store commits were synced (SqliteStore.sync)

    @property
    def host_s(self) -> float:
        return self.cpu_s - self.device_s - self.render_s

    def _per_card(self, seconds: float) -> float:
        return 1000.0 * seconds / self.cards_passed if self.cards_passed else float("inf")

    @property
    def ms_per_card(self) -> float:
        """The host's CPU per card passed (the engine's figure)."""
        return self._per_card(self.host_s)

    @property
    def device_ms_per_card(self) -> float:
        return self._per_card(self.device_s)

    @property
    def render_ms_per_card(self) -> float:
        return self._per_card(self.render_s)

    @property
    def total_ms_per_card(self) -> float:
        return self._per_card(self.cpu_s)

    @property
    def cards_per_hour_per_core(self) -> float:
        return 3_600_000.0 / self.ms_per_card if self.cards_passed else 0.0

    @property
    def ratio_to_floor(self) -> float:
        return self.ms_per_card / self.floor_ms_per_card

    @property
    def ratio_to_bulk_floor(self) -> float:
        return (
            self.ms_per_card / self.bulk_floor_ms_per_card if self.bulk_floor_ms_per_card else 0.0
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "cards": self.cards,
            "cards_passed": self.cards_passed,
            "cpu_s": round(self.cpu_s, 3),
            "host_cpu_s": round(self.host_s, 3),
            "device_cpu_s": round(self.device_s, 3),
            "render_cpu_s": round(self.render_s, 3),
            "wall_s": round(self.wall_s, 3),
            "engine_ms_per_card": round(self.ms_per_card, 3),
            "device_ms_per_card": round(self.device_ms_per_card, 3),
            "render_ms_per_card": round(self.render_ms_per_card, 3),
            "total_ms_per_card": round(self.total_ms_per_card, 3),
            "floor_ms_per_card": round(self.floor_ms_per_card, 3),
            "ratio_to_floor": round(self.ratio_to_floor, 2),
            "floor": "protocol",
            "bulk_floor_ms_per_card": round(self.bulk_floor_ms_per_card, 3),
            "ratio_to_bulk_floor": round(self.ratio_to_bulk_floor, 2),
            "total_ratio_to_floor": round(self.total_ms_per_card / self.floor_ms_per_card, 2),
            "cards_per_hour_per_core": round(self.cards_per_hour_per_core),
            "target_cards_per_hour_per_core": 200_000,
            "target_ratio_to_floor": 3.0,
            "outputs": dict(OUTPUTS),
            "store_sync": self.store_sync,
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
    """CPU milliseconds of one card's bulk crypto floor (``bench.floor.bulk_floor_ms``)."""
    return bulk_floor_ms(keystore, rounds=rounds, seed=seed)


#: What the measured line writes per card and per tray (module docstring).
OUTPUTS: dict[str, bool] = {"chip_files": False, "chip_image": False, "trays": True}


def engine_settings() -> LineSettings:
    """Zero-latency in-process devices, production outputs (see the module docstring)."""
    return LineSettings.model_validate({"printers": {"render": "never"}, "output": OUTPUTS})


def measure_engine(cards: int, *, floor_rounds: int = 50, seed: int = 0) -> EngineResult:
    with tempfile.TemporaryDirectory(prefix="perso-bench-") as tmp:
        root = Path(tmp)
        home, keystore = prepare_home(root, cards, seed=seed)
        # Half the floors' rounds before the run and half after: on a shared host the CPU's speed
        # drifts, and the ratio should compare the two over the same stretch of time.
        profile = record_profile(keystore, seed=seed)
        first, second = max(1, floor_rounds // 2), max(1, floor_rounds - floor_rounds // 2)
        before = protocol_floor_ms(keystore, profile, rounds=first, seed=seed)
        bulk_before = bulk_floor_ms(keystore, rounds=first, seed=seed)
        # The set-up's garbage (synthetic applications, intake) is collected before the clock
        # starts, not by a collection that happens to fall inside the run.
        gc.collect()
        with (
            home.open_store(keystore) as store,
            DEVICE_CPU.reading() as device,
            RENDER_CPU.reading() as render,
        ):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            report: LineReport = asyncio.run(
                run_line(store, keystore, engine_settings(), out_dir=root / "out")
            )
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            sync = str(getattr(store, "sync", "full"))
        after = protocol_floor_ms(keystore, profile, rounds=second, seed=seed)
        bulk_after = bulk_floor_ms(keystore, rounds=second, seed=seed)
    return EngineResult(
        cards,
        report.cards_passed,
        cpu,
        wall,
        (before + after) / 2,
        bulk_floor_ms_per_card=(bulk_before + bulk_after) / 2,
        device_s=device.seconds,
        render_s=render.seconds,
        store_sync=sync,
    )
