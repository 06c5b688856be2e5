"""Per-chip SCP03 key diversification (GPPro "KDF3") and AES key check values."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC
from hypothesis import given
from hypothesis import strategies as st
from kat import h, load

from chip.apdu import CommandAPDU
from chip.crypto.diversify import diversify_kdf3, kcv_aes
from chip.errors import AuthenticationError
from chip.protocols.scp03 import (
    Scp03Card,
    Scp03CardSession,
    SecurityLevel,
    StaticKeys,
    open_scp03,
)
from chip.transport.base import run_flow

KDF3 = load("globalplatform/kdf3_diversification.toml")
KCV = load("globalplatform/kcv_aes.toml")

kdds = st.binary(min_size=10, max_size=10)
masters = st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@pytest.mark.parametrize("v", KDF3.vectors, ids=lambda v: v["name"])
def test_kdf3_vectors(v: dict[str, Any]) -> None:
    keys = diversify_kdf3(h(v["master"]), h(v["kdd"]))
    for name in ("enc", "mac", "dek"):
        key = getattr(keys, name)
        assert len(key) == len(h(v["master"]))
        if name in v:
            assert key == h(v[name]), name
        if f"kcv_{name}" in v:
            assert kcv_aes(key) == h(v[f"kcv_{name}"]), name


@pytest.mark.parametrize("v", KCV.vectors, ids=lambda v: v["name"])
def test_kcv_vectors(v: dict[str, Any]) -> None:
    assert kcv_aes(h(v["key"])) == h(v["kcv"])


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


@given(master=masters, kdd=kdds)
def test_kdf3_is_the_gppro_template(master: bytes, kdd: bytes) -> None:
    # "$_ 00 00 00 $k 00 $0..$9": CMAC(master, i || 00 00 00 k 00 || KDD), i = 1, 2, ...
    keys = diversify_kdf3(master, kdd)
    for k, key in ((1, keys.enc), (2, keys.mac), (3, keys.dek)):
        stream = b"".join(_cmac(master, bytes((i, 0, 0, 0, k, 0)) + kdd) for i in (1, 2))
        assert key == stream[: len(master)]


@given(master=masters, kdd=kdds, other=kdds)
def test_kdf3_separates_chips_and_key_types(master: bytes, kdd: bytes, other: bytes) -> None:
    keys = diversify_kdf3(master, kdd)
    assert len({keys.enc, keys.mac, keys.dek, master}) == 4
    if other != kdd:
        assert diversify_kdf3(master, other).enc != keys.enc


def test_kdf3_key_version() -> None:
    assert diversify_kdf3(bytes(16), bytes(10)).kvn == 0x30
    assert diversify_kdf3(bytes(16), bytes(10), kvn=0x31).kvn == 0x31


@pytest.mark.parametrize(("master", "kdd"), [(bytes(15), bytes(10)), (bytes(16), bytes(8))])
def test_kdf3_rejects_misuse(master: bytes, kdd: bytes) -> None:
    with pytest.raises(ValueError):
        diversify_kdf3(master, kdd)


def test_kcv_rejects_non_aes_key() -> None:
    with pytest.raises(ValueError):
        kcv_aes(bytes(8))


class _CardTransport:
    def __init__(self, card: Scp03Card) -> None:
        self.card = card
        self.session: Scp03CardSession | None = None

    def transmit(self, apdu: bytes) -> bytes:
        cmd = CommandAPDU.from_bytes(apdu)
        if cmd.ins == 0x50:
            return self.card.initialize_update(cmd).to_bytes()
        response, self.session = self.card.external_authenticate(cmd)
        return response.to_bytes()


@pytest.mark.parametrize("v", KDF3.vectors, ids=lambda v: v["name"])
def test_host_opens_diversified_card_from_master(v: dict[str, Any]) -> None:
    master, kdd = h(v["master"]), h(v["kdd"])
    card = Scp03Card(
        diversify_kdf3(master, kdd), kdd=kdd, sequence_counter=0, aid=bytes(8), rng=bytes
    )
    transport = _CardTransport(card)
    level = SecurityLevel.C_MAC | SecurityLevel.C_DECRYPTION

    def per_card(card_kdd: bytes) -> StaticKeys:
        return diversify_kdf3(master, card_kdd)

    session = run_flow(open_scp03(per_card, security_level=level, rng=bytes), transport)
    assert session.kdd == kdd
    assert transport.session is not None

    # The undiversified master does not open the card.
    undiversified = StaticKeys(master, master, master)
    with pytest.raises(AuthenticationError):
        run_flow(open_scp03(undiversified, security_level=level, rng=bytes), transport)
