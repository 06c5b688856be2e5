"""Benchmarks of the chip layer (pytest-benchmark; `make bench` prints the figures).

The figure that matters is the ratio of one whole card (personalise + verify, in process) to the bare
crypto floor of the same card measured in the same run: the signature, the hashes, and one pass of
encryption and MAC over the bytes written (SCP03: AES-CBC + CMAC) and read (BAC: 3DES-CBC + retail MAC).
"""

from __future__ import annotations

import hashlib
import os

import pytest
from replay import Recorder, Replay, seeded

from chip.apdu import CommandAPDU
from chip.crypto.aes import aes_cbc_encrypt, aes_cmac
from chip.crypto.des import retail_mac, tdes_encrypt
from chip.crypto.padding import pad
from chip.crypto.sm import AesSecureMessaging, TdesSecureMessaging
from chip.emulator import ChipImage, ChipOS
from chip.lds.sod import build_sod
from chip.mrz import mrz_information
from chip.perso import build_plan, personalise
from chip.transport.base import run_flow
from chip.verify import read_and_verify
from personaliser.chipstage import EXTENDED_CHUNK, personalise_card

KB = bytes(range(256)) * 4


@pytest.mark.parametrize("kind", ["3des", "aes"])
def test_sm_wrap_unwrap_per_kb(benchmark, kind: str) -> None:  # type: ignore[no-untyped-def]
    cls = TdesSecureMessaging if kind == "3des" else AesSecureMessaging
    klen = 16
    reader = cls(bytes(range(klen)), bytes(range(16, 16 + klen)), 0)
    chip = cls(bytes(range(klen)), bytes(range(16, 16 + klen)), 0)
    cmd = CommandAPDU(0x00, 0xD6, 0x00, 0x00, KB)

    def round_trip() -> CommandAPDU:
        return chip.unwrap_command(reader.wrap_command(cmd))

    assert benchmark(round_trip) == cmd


def test_sod_build_and_sign(benchmark, keystore, applications) -> None:  # type: ignore[no-untyped-def]
    plan = build_plan(applications[0].to_holder(), keystore.document_signer())
    dgs = plan.dg_files
    signer = keystore.document_signer()
    sod = benchmark(build_sod, dgs, signer)
    assert set(sod.dg_hashes) == set(dgs)


def test_card_personalise_and_verify(benchmark, keystore, applications) -> None:  # type: ignore[no-untyped-def]
    app = applications[0]
    outcome = benchmark(lambda: personalise_card(app, keystore)[0])
    assert outcome.passed, outcome.reasons


def test_card_crypto_floor(benchmark, keystore, applications) -> None:  # type: ignore[no-untyped-def]
    """Sign + hash + one encrypt/MAC pass over the bytes written and read for the same card."""
    plan = build_plan(applications[0].to_holder(), keystore.document_signer())
    payload = b"".join(f.data for f in plan.files)
    signer = keystore.document_signer()
    aes_key, des_key = os.urandom(16), os.urandom(16)
    padded16, padded8 = pad(payload, 16), pad(payload, 8)

    def floor() -> bytes:
        for f in plan.files:
            hashlib.sha256(f.data).digest()
        signer.sign(payload[:200])
        aes_cmac(aes_key, aes_cbc_encrypt(aes_key, padded16, bytes(16)))
        return retail_mac(des_key, tdes_encrypt(des_key, padded8), padded=True)

    benchmark(floor)


def test_card_host_side(benchmark, keystore, applications) -> None:  # type: ignore[no-untyped-def]
    """One card's host CPU: build LDS + SOD, the perso script, the readback and its verification.

    The chip's answers are recorded once and replayed, so the emulated chip's own crypto (done by
    the chip itself on a real line) is not timed.  The host's randomness is seeded identically in
    every round, so the replayed answers fit; a fresh EF.SOD is signed every round.
    """
    app = applications[0]
    holder = app.to_holder()
    signer = keystore.document_signer()
    serial = b"HK" + bytes(8)
    anchors = [keystore.csca_certificate()]

    def card(transport_for_perso, transport_for_qa):  # type: ignore[no-untyped-def]
        plan = build_plan(holder, signer)
        host = seeded(1)
        run_flow(personalise(plan, keystore.scp03_keys_for, rng=host, chunk_size=EXTENDED_CHUNK),
                 transport_for_perso)  # fmt: skip
        m = plan.mrz
        mrz = mrz_information(m.document_number, m.date_of_birth, m.date_of_expiry)
        verdict = run_flow(
            read_and_verify(mrz, host, trust_anchors=anchors, expected_dg1=plan.file("DG1")),
            transport_for_qa,
        )
        return verdict

    chip = ChipOS(ChipImage.blank(serial, keystore.scp03_keys_for(serial)), rng=seeded(2))
    encoder, qa = Recorder(chip), Recorder(chip)
    assert card(encoder, qa).passed
    chip.power_on()

    def host_only():  # type: ignore[no-untyped-def]
        return card(Replay(encoder.responses), Replay(qa.responses))

    assert benchmark(host_only).passed
