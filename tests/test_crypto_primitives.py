"""Known answers and properties of the ICAO 9303 crypto primitives (padding, DES, AES, KDF)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from hypothesis import given
from hypothesis import strategies as st
from kat import h, load

import chip.crypto
from chip.crypto.aes import (
    Aes,
    AesCmac,
    aes_cbc_decrypt,
    aes_cbc_encrypt,
    aes_cmac,
    aes_ecb_encrypt,
)
from chip.crypto.des import RetailMac, Tdes, adjust_parity, retail_mac, tdes_decrypt, tdes_encrypt
from chip.crypto.kdf import ENC, MAC, PACE, KeyAlg, bac_key_seed, bac_keys, derive_key
from chip.crypto.padding import pad, unpad
from chip.errors import EncodingError

PADDING = load("iso9797/padding.toml")
RETAIL = load("iso9797/retail-mac.toml")
CMAC_RFC = load("rfc4493/aes-cmac.toml")
BAC = load("icao-9303-part11/appendix-d-bac.toml")
KDF = load("icao-9303-part11/kdf.toml")
KDF_SELFTEST = load("icao-9303-part11/kdf-sha256-selftest.toml")
NONCE = load("icao-9303-part11/appendix-g1-nonce.toml")
AES_SM = load("icao-9303-part11/aes-sm.toml")

keys16 = st.binary(min_size=16, max_size=16)
aes_keys = st.sampled_from((16, 24, 32)).flatmap(lambda n: st.binary(min_size=n, max_size=n))


def ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def test_package_exports_are_pinned() -> None:
    assert sorted(chip.crypto.__all__) == sorted(
        [
            "ENC", "MAC", "PACE", "AesSecureMessaging", "KeyAlg", "SecureMessaging",
            "TdesSecureMessaging", "adjust_parity", "aes_cbc_decrypt", "aes_cbc_encrypt",
            "aes_cmac", "aes_ecb_encrypt", "bac_key_seed", "bac_keys", "derive_key", "pad",
            "retail_mac", "tdes_decrypt", "tdes_encrypt", "unpad",
        ]
    )  # fmt: skip
    for name in chip.crypto.__all__:
        assert getattr(chip.crypto, name) is not None


# -- padding (ISO/IEC 9797-1 method 2) -----------------------------------------------------------


@pytest.mark.parametrize("v", PADDING.vectors, ids=ids(PADDING.vectors))
def test_padding_known_answers(v: dict[str, Any]) -> None:
    assert pad(h(v["data"]), v["block"]) == h(v["padded"])
    assert unpad(h(v["padded"])) == h(v["data"])
    assert unpad(h(v["padded"]), block=v["block"]) == h(v["data"])


@given(st.binary(max_size=100), st.sampled_from((8, 16)))
def test_pad_round_trip_and_shape(data: bytes, block: int) -> None:
    padded = pad(data, block)
    assert len(padded) % block == 0
    assert 1 <= len(padded) - len(data) <= block
    assert padded.startswith(data)
    assert unpad(padded, block=block) == data


@pytest.mark.parametrize(
    ("padded", "block"),
    [
        (b"", None),
        (bytes(8), None),  # no 80 marker at all
        (b"\x12\x34\x56\x78\x90\xab\xcd\xef", None),  # ends in data, not padding
        (b"\x12\x80\x00\x00\x00\x00\x00\x01", None),  # byte after 80 is not zero
        (b"\x12\x80\x00\x00\x00\x00\x00", 8),  # not whole blocks
        (b"\x80" + bytes(15), 8),  # padding longer than one block
        (b"", 8),
    ],
)
def test_unpad_rejects_malformed(padded: bytes, block: int | None) -> None:
    with pytest.raises(EncodingError):
        unpad(padded, block=block)


def test_pad_rejects_a_nonsense_block() -> None:
    with pytest.raises(ValueError, match="block"):
        pad(b"x", 0)


# -- DES: parity, 3DES-CBC, retail MAC -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["parity-ka-enc", "parity-kb-enc", "parity-ka-mac", "parity-kb-mac"]
)
def test_parity_known_answers(name: str) -> None:
    v = BAC.named(name)
    assert adjust_parity(h(v["raw"])) == h(v["adjusted"])


@given(st.binary(max_size=32))
def test_parity_is_odd_idempotent_and_touches_only_bit_0(key: bytes) -> None:
    adjusted = adjust_parity(key)
    assert all(bin(b).count("1") % 2 == 1 for b in adjusted)
    assert adjust_parity(adjusted) == adjusted
    assert bytes(b & 0xFE for b in adjusted) == bytes(b & 0xFE for b in key)


def test_tdes_known_answers_d3() -> None:
    keys, auth = BAC.named("document-keys"), BAC.named("mutual-authentication")
    k_enc = h(keys["k_enc"])
    assert tdes_encrypt(k_enc, h(auth["s"])) == h(auth["e_ifd"])
    assert tdes_decrypt(k_enc, h(auth["resp_data"])[:32]) == h(auth["r"])
    assert Tdes(k_enc).encrypt(h(auth["s"])) == h(auth["e_ifd"])


@given(
    keys16,
    st.binary(max_size=64).map(lambda d: d[: len(d) // 8 * 8]),
    st.binary(min_size=8, max_size=8),
)
def test_tdes_round_trip(key: bytes, data: bytes, iv: bytes) -> None:
    cryptogram = tdes_encrypt(key, data, iv)
    assert len(cryptogram) == len(data)
    assert tdes_decrypt(key, cryptogram, iv) == data


@given(keys16, st.binary(min_size=8, max_size=8))
def test_tdes_is_two_key_ede(key: bytes, block: bytes) -> None:
    # K1 || K2 || K1 from first principles: E_K1(D_K2(E_K1(x))) with single-DES ECB steps.
    def des(k: bytes, decrypt: bool, x: bytes) -> bytes:
        cipher = Cipher(TripleDES(k * 3), modes.ECB())
        ctx = cipher.decryptor() if decrypt else cipher.encryptor()
        return ctx.update(x)

    k1, k2 = key[:8], key[8:]
    assert tdes_encrypt(key, block) == des(k1, False, des(k2, True, des(k1, False, block)))


@pytest.mark.parametrize("v", RETAIL.vectors, ids=ids(RETAIL.vectors))
def test_retail_mac_known_answers(v: dict[str, Any]) -> None:
    key = h(v["key"])
    if v["padding"] == 2:
        assert retail_mac(key, h(v["data"])) == h(v["mac"])
        assert retail_mac(key, pad(h(v["data"]), 8), padded=True) == h(v["mac"])
    else:
        assert retail_mac(key, h(v["padded_data"]), padded=True) == h(v["mac"])


def _retail_mac_by_definition(key: bytes, data: bytes) -> bytes:
    """ISO/IEC 9797-1 MAC algorithm 3 block by block, as the standard defines it."""
    ka, kb = key[:8], key[8:]
    enc_a = Cipher(TripleDES(ka * 3), modes.ECB()).encryptor()
    chain = bytes(8)
    for i in range(0, len(data), 8):
        block = bytes(x ^ y for x, y in zip(data[i : i + 8], chain, strict=True))
        chain = enc_a.update(block)
    dec_b = Cipher(TripleDES(kb * 3), modes.ECB()).decryptor()
    return enc_a.update(dec_b.update(chain))


@given(keys16, st.binary(max_size=80))
def test_retail_mac_matches_the_definition(key: bytes, data: bytes) -> None:
    expected = _retail_mac_by_definition(key, pad(data, 8))
    assert retail_mac(key, data) == expected
    assert RetailMac(key).mac(pad(data, 8), padded=True) == expected


@pytest.mark.parametrize("data", [b"", b"1234567"])
def test_retail_mac_refuses_unpadded_input_marked_padded(data: bytes) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        retail_mac(bytes(16), data, padded=True)


@pytest.mark.parametrize(
    "call",
    [
        lambda: tdes_encrypt(bytes(24), bytes(8)),
        lambda: tdes_encrypt(bytes(8), bytes(8)),
        lambda: tdes_encrypt(bytes(16), bytes(7)),
        lambda: tdes_decrypt(bytes(16), bytes(8), bytes(16)),
        lambda: retail_mac(bytes(15), b"x"),
    ],
)
def test_des_rejects_bad_lengths(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


def test_key_holders_hide_keys_in_repr() -> None:
    key = bytes.fromhex("979EC13B1CBFE9DCD01AB0FED307EAE5")
    for holder in (Tdes(key), RetailMac(key), Aes(key), AesCmac(key)):
        text = repr(holder)
        assert "979" not in text.upper() and "hidden" in text


# -- AES: CBC, ECB, CMAC -------------------------------------------------------------------------


def test_aes_cbc_known_answer_g1_nonce() -> None:
    v = NONCE.named("nonce")
    assert aes_cbc_decrypt(h(v["k_pi"]), h(v["z"]), h(v["iv"])) == h(v["s"])
    assert aes_cbc_encrypt(h(v["k_pi"]), h(v["s"]), h(v["iv"])) == h(v["z"])
    assert Aes(h(v["k_pi"])).cbc_decrypt(h(v["z"]), h(v["iv"])) == h(v["s"])


def test_aes_ecb_known_answer_rfc4493_subkey_l() -> None:
    key = h(CMAC_RFC.source["key"])
    assert aes_ecb_encrypt(key, bytes(16)) == h(CMAC_RFC.source["l"])
    cipher = Aes(key)
    # The long-lived ECB context must give the same answer on every call.
    assert cipher.ecb_encrypt(bytes(16)) == cipher.ecb_encrypt(bytes(16)) == h(CMAC_RFC.source["l"])


def test_aes256_secure_messaging_iv_known_answer() -> None:
    v = AES_SM.named("gmrtd-aes256-do87")
    cipher = Aes(h(v["ks_enc"]))
    value = h(v["do87_value"])
    assert value[0] == 0x01
    plain = cipher.cbc_decrypt(value[1:], cipher.ecb_encrypt(h(v["ssc"])))
    assert unpad(plain, block=16) == h(v["data"])


@pytest.mark.parametrize("v", CMAC_RFC.vectors, ids=ids(CMAC_RFC.vectors))
def test_aes_cmac_rfc4493_examples(v: dict[str, Any]) -> None:
    key, message = h(CMAC_RFC.source["key"]), h(CMAC_RFC.source["message"])[: v["length"]]
    assert aes_cmac(key, message) == h(v["mac"])
    assert AesCmac(key).mac(message) == h(v["mac"])


def test_keyed_cmac_does_not_carry_state_between_messages() -> None:
    key, message = h(CMAC_RFC.source["key"]), h(CMAC_RFC.source["message"])
    mac = AesCmac(key)
    first, second = mac.mac(message[:16]), mac.mac(message[:16])
    assert first == second == h(CMAC_RFC.named("example-2")["mac"])


@given(
    aes_keys,
    st.binary(max_size=96).map(lambda d: d[: len(d) // 16 * 16]),
    st.binary(min_size=16, max_size=16),
)
def test_aes_cbc_round_trip(key: bytes, data: bytes, iv: bytes) -> None:
    assert aes_cbc_decrypt(key, aes_cbc_encrypt(key, data, iv), iv) == data
    cipher = Aes(key)
    assert cipher.cbc_decrypt(cipher.cbc_encrypt(data, iv), iv) == data


@given(aes_keys, st.binary(max_size=64), st.binary(max_size=64))
def test_aes_cmac_separates_messages(key: bytes, a: bytes, b: bytes) -> None:
    assert len(aes_cmac(key, a)) == 16
    assert (aes_cmac(key, a) == aes_cmac(key, b)) == (a == b)


@pytest.mark.parametrize(
    "call",
    [
        lambda: aes_cmac(bytes(15), b""),
        lambda: aes_cbc_encrypt(bytes(16), bytes(15), bytes(16)),
        lambda: aes_ecb_encrypt(bytes(16), bytes(8)),
        lambda: Aes(bytes(20)),
        lambda: Aes(bytes(16)).cbc_decrypt(bytes(17), bytes(16)),
    ],
)
def test_aes_rejects_bad_lengths(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


# -- ICAO key derivation (9.7.1) and BAC document keys (9.7.2) ---------------------------------


@pytest.mark.parametrize("v", KDF.vectors, ids=ids(KDF.vectors))
def test_kdf_icao_known_answers(v: dict[str, Any]) -> None:
    assert derive_key(h(v["seed"]), v["counter"], KeyAlg[v["alg"]]) == h(v["key"])


@pytest.mark.parametrize("v", KDF_SELFTEST.vectors, ids=ids(KDF_SELFTEST.vectors))
def test_kdf_sha256_branch_selftest_not_icao(v: dict[str, Any]) -> None:
    # Project-made values (gmrtd), not an ICAO example: a self-test of the SHA-256 branch only.
    assert derive_key(h(v["seed"]), v["counter"], KeyAlg[v["alg"]]) == h(v["key"])


def test_kdf_counter_constants() -> None:
    assert (ENC, MAC, PACE) == (1, 2, 3)
    assert [alg.key_length for alg in KeyAlg] == [16, 16, 24, 32]


def test_bac_document_keys_d2() -> None:
    v = BAC.named("document-keys")
    assert (
        v["mrz_information"] == v["mrz_line2"][0:10] + v["mrz_line2"][13:20] + v["mrz_line2"][21:28]
    )
    assert hashlib.sha1(v["mrz_information"].encode()).digest() == h(v["sha1_mrz_information"])
    assert bac_key_seed(v["mrz_information"]) == h(v["k_seed"])
    assert bac_keys(v["mrz_information"]) == (h(v["k_enc"]), h(v["k_mac"]))
    # Before parity adjustment the keys are the leading SHA-1 bytes (D.2).
    assert bytes(b & 0xFE for b in h(v["k_enc"])) == bytes(
        b & 0xFE for b in h(v["sha1_seed_enc"])[:16]
    )


@given(st.binary(max_size=40), st.integers(0, 0xFFFFFFFF), st.sampled_from(list(KeyAlg)))
def test_kdf_is_the_hash_of_seed_and_counter(seed: bytes, counter: int, alg: KeyAlg) -> None:
    key = derive_key(seed, counter, alg)
    data = seed + counter.to_bytes(4, "big")
    assert len(key) == alg.key_length
    if alg is KeyAlg.TDES:
        assert key == adjust_parity(hashlib.sha1(data).digest()[:16])
    elif alg is KeyAlg.AES128:
        assert key == hashlib.sha1(data).digest()[:16]
    else:
        assert key == hashlib.sha256(data).digest()[: alg.key_length]


@pytest.mark.parametrize("counter", [-1, 1 << 32])
def test_kdf_counter_range(counter: int) -> None:
    with pytest.raises(ValueError, match="32-bit"):
        derive_key(b"seed", counter, KeyAlg.TDES)


@pytest.mark.parametrize(
    "mrz_information",
    ["", "L898902C<36908061940623", "l898902c<369080619406236", "L898902C 369080619406236"],
)
def test_bac_key_seed_rejects_malformed_mrz_without_echoing_it(mrz_information: str) -> None:
    with pytest.raises(EncodingError) as info:
        bac_key_seed(mrz_information)
    assert info.value.field == "mrz_information"
    assert "898902" not in str(info.value)
