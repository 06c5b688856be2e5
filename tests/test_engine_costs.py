"""What the engine-cost work changed must not change any answer (issue 5).

- CBC over a long-lived context (chip.crypto.cbc) equals a fresh context per call, for any
  sequence of messages and IVs, in both directions, for 3DES and AES, and the retail MAC over
  one context equals the MAC by definition;
- the device meter counts the chip's CPU and only while a reading is open;
- personal data rebuilt without pydantic's validation equals the validated model;
- the store commits an in-station transition without a sync under ``sync="milestones"`` and
  every other write with one; ``sync="full"`` syncs all; the row keeps its size across states;
- a card with nothing to write stages no folder.
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from chip.crypto.aes import Aes
from chip.crypto.cbc import ChainedCbc, xor_block
from chip.crypto.des import RetailMac, Tdes
from chip.crypto.padding import pad
from chip.emulator import DEVICE_CPU, ChipImage, ChipOS, CpuMeter
from chip.lds.sod import EFSod, build_sod, build_sod_der
from personaliser.applications import Application
from personaliser.lifecycle import STATION_STATES, State
from personaliser.line.stations import publish_card, stage_card
from personaliser.store import PersonalDataCipher, SqliteStore
from personaliser.store.crypto import OPERATIONAL_FIELDS
from personaliser.store.sqlite import MIGRATIONS, RELAXED_STATES
from personaliser.synth import synth_applications

KEY = bytes(range(32))

# -- CBC over one context ----------------------------------------------------------------------

messages = st.lists(
    st.tuples(st.integers(0, 40), st.binary(min_size=16, max_size=16)), min_size=1, max_size=6
)


def _fresh(algorithm: object, iv: bytes, data: bytes, *, decrypt: bool) -> bytes:
    cipher = Cipher(algorithm, modes.CBC(iv))  # type: ignore[arg-type]
    context = cipher.decryptor() if decrypt else cipher.encryptor()
    return context.update(data)


@pytest.mark.parametrize("decrypt", [False, True])
@pytest.mark.parametrize("block", [8, 16])
@given(key=st.binary(min_size=16, max_size=16), calls=messages, zero_ivs=st.booleans())
def test_chained_cbc_equals_a_fresh_context_per_call(
    decrypt: bool, block: int, key: bytes, calls: list[tuple[int, bytes]], zero_ivs: bool
) -> None:
    algorithm = TripleDES(key + key[:8]) if block == 8 else algorithms.AES(key)
    chained = ChainedCbc(algorithm, block, decrypt=decrypt)
    for blocks, seed in calls:
        data = (seed * (blocks + 1))[: block * blocks]
        iv = bytes(block) if zero_ivs else seed[:block]
        assert chained.run(data, iv) == _fresh(algorithm, iv, data, decrypt=decrypt)


@given(key=st.binary(min_size=16, max_size=16), calls=messages)
def test_session_ciphers_round_trip_and_match_one_shot_calls(
    key: bytes, calls: list[tuple[int, bytes]]
) -> None:
    tdes, aes = Tdes(key), Aes(key)
    for blocks, seed in calls:
        data8, data16 = (seed * 41)[: 8 * (blocks + 1)], (seed * 41)[: 16 * (blocks + 1)]
        assert tdes.decrypt(tdes.encrypt(data8, seed[:8]), seed[:8]) == data8
        assert tdes.encrypt(data8) == Tdes(key).encrypt(data8)
        assert aes.cbc_decrypt(aes.cbc_encrypt(data16, seed), seed) == data16
        assert aes.cbc_encrypt(data16, seed) == Aes(key).cbc_encrypt(data16, seed)


def _retail_mac_by_definition(key: bytes, padded: bytes) -> bytes:
    ka, kb = key[:8], key[8:]
    h = bytes(8)
    single = TripleDES(ka * 3)
    for i in range(0, len(padded), 8):
        h = Cipher(single, modes.ECB()).encryptor().update(xor_block(padded[i : i + 8], h))
    h = Cipher(TripleDES(kb * 3), modes.ECB()).decryptor().update(h)
    return Cipher(single, modes.ECB()).encryptor().update(h)


@given(key=st.binary(min_size=16, max_size=16), datas=st.lists(st.binary(max_size=70), max_size=5))
def test_one_retail_mac_object_macs_each_message_from_a_zero_iv(
    key: bytes, datas: list[bytes]
) -> None:
    mac = RetailMac(key)
    for data in datas:
        assert mac.mac(data) == _retail_mac_by_definition(key, pad(data, 8))


def test_chained_cbc_refuses_nothing_and_returns_nothing_for_empty_data() -> None:
    chained = ChainedCbc(algorithms.AES(KEY[:16]), 16, decrypt=False)
    assert chained.run(b"", bytes(16)) == b""
    assert "key" in repr(chained) and KEY[:16].hex() not in repr(chained)
    with pytest.raises(ValueError, match="16 bytes"):
        Aes(KEY[:16]).cbc_encrypt(bytes(16), bytes(8))


# -- EF.SOD without the self-check parse ---------------------------------------------------------


def test_sod_der_is_the_checked_sod(keystore, applications) -> None:  # type: ignore[no-untyped-def]
    signer = keystore.document_signer()
    files = {1: b"\x61\x03abc", 2: b"\x75\x03def"}
    when = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    der = build_sod_der(files, signer, signing_time=when)
    assert der == build_sod(files, signer, signing_time=when).to_bytes()
    sod = EFSod.from_bytes(der)
    sod.verify_signature([keystore.csca_certificate()])
    assert sod.check_hashes(files) == []


@given(
    when=st.datetimes(
        min_value=datetime(1930, 1, 1), max_value=datetime(2080, 1, 1), timezones=st.just(UTC)
    )
)
def test_signing_time_is_what_asn1crypto_writes(when: datetime) -> None:
    from asn1crypto import cms

    from chip.lds.sod import _time_der

    choice = "utc_time" if 1950 <= when.year <= 2049 else "generalized_time"
    assert _time_der(when) == cms.Time(name=choice, value=when.replace(microsecond=0)).dump()


# -- the device meter ------------------------------------------------------------------------------


def _busy(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_meter_counts_only_while_a_reading_is_open() -> None:
    meter = CpuMeter("test")
    meter.call(_busy, 0.01)  # no reading open: not counted anywhere
    with meter.reading() as outer:
        meter.call(_busy, 0.02)
        with meter.reading() as inner:
            assert meter.call(lambda x: x + 1, 1) == 2
    assert outer.sections == 2 and inner.sections == 1
    assert 0.02 <= outer.seconds < 0.2
    assert inner.seconds <= outer.seconds
    assert not meter.active


def test_the_chip_emulator_reports_its_cpu(keystore) -> None:  # type: ignore[no-untyped-def]
    serial = b"HK" + bytes(8)
    chip = ChipOS(ChipImage.blank(serial, keystore.scp03_keys_for(serial)))
    with DEVICE_CPU.reading() as device:
        for _ in range(50):
            assert chip.transmit(bytes.fromhex("00A4040C07A0000002471001")) == b"\x90\x00"
    assert device.sections == 50 and device.seconds > 0


# -- personal data rebuilt without validation ---------------------------------------------------


def test_opened_applications_equal_the_validated_model() -> None:
    cipher = PersonalDataCipher(KEY)
    for app in synth_applications(12, seed=11):
        sealed = cipher.seal_application(app)
        operational = app.model_dump(mode="json", include=set(OPERATIONAL_FIELDS))
        opened = cipher.open_application(operational, sealed)
        assert opened == app
        assert opened.model_dump() == app.model_dump()
        assert opened == Application.model_validate(opened.model_dump())
        assert type(opened.collection_date) is date and opened.approved_at.tzinfo is not None
        assert all(type(m) is tuple for f in opened.fingerprints for m in f.minutiae)


# -- the store: syncs, row size --------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def _walk_a_card(tmp_path: Path, sync: str) -> tuple[list[tuple[State, int]], SqliteStore]:
    """Drive one card through the line; the synchronous level in force at each COMMIT."""
    app = next(synth_applications(1, seed=3))
    levels: list[int] = []
    store: SqliteStore | None = None

    def hook(point: str) -> None:
        if point == "commit" and store is not None:
            levels.append(store._conn().execute("PRAGMA synchronous").fetchone()[0])

    store = SqliteStore(
        tmp_path / f"{sync}.db",
        cipher=PersonalDataCipher(KEY),
        clock=Clock(),
        sync=sync,
        fault_hook=hook,
    )
    store.add_applications([app], source="t")
    store.add_batch("B1", office=app.collection_office, due_date=date(2026, 3, 13))
    store.issue_blanks("B1", 2, idempotency_key="issue")
    seen: list[tuple[State, int]] = []
    path = (State.QUEUED, State.ENCODING, State.ENCODED, State.PRINTING, State.PRINTED,
            State.VERIFYING, State.PASSED)  # fmt: skip
    for n, to in enumerate(path):
        fields = {"batch_id": "B1"} if to is State.QUEUED else {"station": "s"}
        if to is State.ENCODED:
            fields["blank_serial"] = "HK0001"
        levels.clear()
        store.transition(app.application_id, to, idempotency_key=f"t{n}", **fields)
        seen.append((to, levels[-1]))
    return seen, store


def test_milestones_sync_every_commit_but_in_station_ones(tmp_path: Path) -> None:
    seen, store = _walk_a_card(tmp_path, "milestones")
    with store:
        full, normal = 2, 1  # PRAGMA synchronous values
        assert seen == [(to, normal if to in RELAXED_STATES else full) for to, _ in seen]
        assert RELAXED_STATES < STATION_STATES and State.ENCODING not in RELAXED_STATES
        # Any other write after a relaxed one is synced again.
        store.issue_blanks("B1", 1, idempotency_key="issue-2")
        assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == full


def test_full_sync_syncs_every_commit(tmp_path: Path) -> None:
    seen, store = _walk_a_card(tmp_path, "full")
    store.close()
    assert {level for _, level in seen} == {2}
    with pytest.raises(ValueError, match="sync"):
        SqliteStore(tmp_path / "x.db", cipher=PersonalDataCipher(KEY), sync="off")


def test_a_row_keeps_its_size_through_the_states(tmp_path: Path) -> None:
    _, store = _walk_a_card(tmp_path, "milestones")
    store.close()
    db = sqlite3.connect(tmp_path / "milestones.db")
    (state, pad_length) = db.execute("SELECT state, length(state_pad) FROM applications").fetchone()
    db.close()
    assert state == "PASSED" and len(state) + pad_length == max(len(s.value) for s in State)


def test_schema_one_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.close()
    with SqliteStore(path, cipher=PersonalDataCipher(KEY)) as store:
        assert store.schema_version == len(MIGRATIONS) == 2
        app = next(synth_applications(1, seed=5))
        store.add_applications([app], source="t")
        assert store.load_application(app.application_id) == app
    db = sqlite3.connect(path)
    indexes = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
    db.close()
    assert "state" not in indexes["applications_by_batch"]
    assert "state" not in indexes["applications_by_office"]
    assert "state" in indexes["applications_by_state"]


# -- outputs ---------------------------------------------------------------------------------------


def test_a_card_with_nothing_to_write_stages_nothing(tmp_path: Path) -> None:
    staged = stage_card(tmp_path / ".staging", "C01", files={}, chip=None, proof=None)
    assert staged is None and not (tmp_path / ".staging").exists()
    assert publish_card(staged, tmp_path) is None
    staged = stage_card(tmp_path / ".staging", "C02", files={"DG1": b"x"}, chip=None, proof=None)
    assert staged is not None
    published = publish_card(staged, tmp_path)
    assert published is not None and (published / "DG1").read_bytes() == b"x"
    assert not os.listdir(tmp_path / ".staging" / "cards")
