"""NIST SP 800-108 counter-mode KDF (CMAC-AES) and the GP SCP03 data derivation built on it."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFCMAC, CounterLocation, Mode
from hypothesis import given
from hypothesis import strategies as st
from kat import h, load

from chip.crypto.diversify import kcv_aes
from chip.crypto.sp800108 import kdf_counter_cmac, scp03_kdf

CAVP = load("nist-sp800-108/kdfctr_cmac_aes.toml")
GPPRO = load("globalplatform/scp03_session_kdf_gppro.toml")

aes_keys = st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))


def _kbkdf(key: bytes, fixed: bytes, length_bits: int, r: int, break_at: int | None) -> bytes:
    """cryptography's own SP 800-108 implementation: an independent oracle."""
    location = CounterLocation.BeforeFixed if break_at is None else CounterLocation.MiddleFixed
    kdf = KBKDFCMAC(
        algorithms.AES,
        Mode.CounterMode,
        length_bits // 8,
        r // 8,
        None,
        location,
        None,
        None,
        fixed,
        break_location=break_at,
    )
    return kdf.derive(key)


@pytest.mark.parametrize("v", CAVP.vectors, ids=lambda v: v["name"])
def test_cavp_counter_before_fixed(v: dict[str, Any]) -> None:
    out = kdf_counter_cmac(h(v["ki"]), h(v["fixed_input"]), v["l_bits"], r=v["r"])
    assert out == h(v["ko"])


@pytest.mark.parametrize("v", GPPRO.vectors, ids=lambda v: v["name"])
def test_scp03_session_key_derivation(v: dict[str, Any]) -> None:
    out = scp03_kdf(h(v["key"]), v["constant"], v["l_bits"], h(v["context"]))
    if "output" in v:
        assert out == h(v["output"])
    assert kcv_aes(out) == h(v["kcv"])


@given(
    key=aes_keys,
    fixed=st.binary(max_size=80),
    blocks=st.integers(1, 5),
    tail=st.sampled_from([0, 8, 64]),
    r=st.sampled_from([8, 16, 24, 32]),
)
def test_counter_mode_matches_cryptography(
    key: bytes, fixed: bytes, blocks: int, tail: int, r: int
) -> None:
    length_bits = blocks * 128 - tail
    assert kdf_counter_cmac(key, fixed, length_bits, r=r) == _kbkdf(
        key, fixed, length_bits, r, None
    )


@given(
    key=aes_keys,
    constant=st.sampled_from([0x00, 0x01, 0x02, 0x04, 0x06, 0x07]),
    length_bits=st.sampled_from([64, 128, 192, 256]),
    context=st.binary(min_size=0, max_size=40),
)
def test_scp03_kdf_is_counter_in_the_middle(
    key: bytes, constant: int, length_bits: int, context: bytes
) -> None:
    # Amendment D 4.1.5: 11 x 00 || constant || 00 || L || i || context, counter after 15 bytes.
    fixed = bytes(11) + bytes((constant, 0)) + length_bits.to_bytes(2, "big") + context
    expected = _kbkdf(key, fixed, length_bits, 8, 15)
    assert scp03_kdf(key, constant, length_bits, context) == expected


@given(
    key=aes_keys, fixed=st.binary(max_size=40), short=st.integers(1, 40), extra=st.integers(1, 40)
)
def test_counter_mode_output_is_a_prefix_stream(
    key: bytes, fixed: bytes, short: int, extra: int
) -> None:
    # L is not part of the fixed input here, so a longer output extends a shorter one.
    long = kdf_counter_cmac(key, fixed, (short + extra) * 8)
    assert kdf_counter_cmac(key, fixed, short * 8) == long[:short]


@given(key=aes_keys, context=st.binary(max_size=32))
def test_scp03_kdf_binds_length_and_constant(key: bytes, context: bytes) -> None:
    # L and the constant are inside every PRF input: no output is a truncation of another.
    assert scp03_kdf(key, 0x04, 128, context) != scp03_kdf(key, 0x04, 256, context)[:16]
    assert scp03_kdf(key, 0x04, 128, context) != scp03_kdf(key, 0x06, 128, context)


@pytest.mark.parametrize(
    ("key", "length_bits", "r"),
    [
        (bytes(15), 128, 32),  # not an AES key
        (bytes(16), 0, 32),
        (bytes(16), 100, 32),  # not whole bytes
        (bytes(16), 128, 12),  # counter width not whole bytes
        (bytes(16), 256 * 128, 8),  # 256 blocks overflow an 8-bit counter
    ],
)
def test_counter_mode_rejects_misuse(key: bytes, length_bits: int, r: int) -> None:
    with pytest.raises(ValueError):
        kdf_counter_cmac(key, b"", length_bits, r=r)


def test_counter_mode_255_blocks_fit_an_8_bit_counter() -> None:
    assert len(kdf_counter_cmac(bytes(16), b"", 255 * 128, r=8)) == 255 * 16


@pytest.mark.parametrize(("constant", "length_bits"), [(256, 128), (-1, 128), (4, 0x10000)])
def test_scp03_kdf_rejects_misuse(constant: int, length_bits: int) -> None:
    with pytest.raises(ValueError):
        scp03_kdf(bytes(16), constant, length_bits, b"")
