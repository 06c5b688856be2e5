"""ecabinet.security: known answers (RFC 4231, RFC 5869), canonical encoding, keys, counters."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ecabinet.errors import BadMacError, ReplayError
from ecabinet.security import (
    MAX_COUNTER,
    CabinetKeys,
    RecentCache,
    SiteKey,
    canonical_json,
    check_counter,
    compute_mac,
    derive_cabinet_keys,
    hkdf_sha256,
    verify_mac,
)
from tests.kat import h, load

HMAC = load("rfc4231/hmac-sha256.toml")
HKDF = load("rfc5869/hkdf-sha256.toml")
MASTER = bytes(range(32))

# -- known answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("vector", HMAC.vectors, ids=lambda v: v["name"])
def test_hmac_sha256_rfc4231(vector: dict[str, object]) -> None:
    if "key" in vector:
        key = h(str(vector["key"]))
    else:
        key = h(str(vector["key_byte"])) * int(str(vector["key_length"]))
    assert compute_mac(key, h(str(vector["data"]))) == vector["mac"]
    verify_mac(key, h(str(vector["data"])), vector["mac"])


@pytest.mark.parametrize("vector", HKDF.vectors, ids=lambda v: v["name"])
def test_hkdf_sha256_rfc5869(vector: dict[str, object]) -> None:
    salt = h(str(vector["salt"])) or None
    okm = hkdf_sha256(
        h(str(vector["ikm"])),
        info=h(str(vector["info"])),
        length=int(str(vector["length"])),
        salt=salt,
    )
    assert okm == h(str(vector["okm"]))


def test_cabinet_keys_are_hkdf_of_the_site_key_by_hand() -> None:
    # RFC 5869 2.2/2.3 written out with hmac: PRK = HMAC(zeros, IKM); T(n) = HMAC(PRK, T(n-1)|info|n).
    info = b"perso/v1 cabinet-mac\x00S1\x00C07"
    prk = hmac.digest(bytes(32), MASTER, "sha256")
    t1 = hmac.digest(prk, info + b"\x01", "sha256")
    t2 = hmac.digest(prk, t1 + info + b"\x02", "sha256")
    keys = derive_cabinet_keys(MASTER, "S1", "C07")
    assert keys.command == t1
    assert keys.report == t2
    assert SiteKey("S1", MASTER).cabinet("C07").to_bytes() == t1 + t2


def test_mac_known_answer_by_hand() -> None:
    key = bytes(range(32, 64))
    message = {"type": "light", "counter": 7, "drawer": 2, "index": 11, "duration_ms": 5000}
    canonical = b'{"counter":7,"drawer":2,"duration_ms":5000,"index":11,"type":"light"}'
    assert canonical_json(message) == canonical
    expected = hmac.new(key, canonical, hashlib.sha256).hexdigest()
    assert compute_mac(key, canonical) == expected
    verify_mac(key, canonical, expected)


# -- canonical encoding ------------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    value = {"b": [1, {"z": None, "a": True}], "a": "香港", "c": "tab\there"}
    assert (
        canonical_json(value)
        == '{"a":"香港","b":[1,{"a":true,"z":null}],"c":"tab\\there"}'.encode()
    )


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-MAX_COUNTER, MAX_COUNTER) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_json_is_independent_of_insertion_order_and_round_trips(
    value: dict[str, object],
) -> None:
    encoded = canonical_json(value)
    assert json.loads(encoded) == value
    reversed_order = dict(reversed(list(value.items())))
    assert canonical_json(reversed_order) == encoded
    assert canonical_json(json.loads(encoded)) == encoded
    # No insignificant white space: the encoding equals the compact sorted form (strings may hold
    # ": " or newlines of their own, escaped or not, so test the form, not the bytes).
    compact = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert encoded == compact.encode("utf-8")


# -- MAC verification --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        None,
        "",
        "00" * 32,
        "0" * 63,
        "A" * 64,  # upper case is not the encoding
        "zz" * 32,
        "é" * 64,  # non-ASCII: compare_digest on str would raise TypeError
        12345,
    ],
)
def test_verify_mac_refuses_wrong_or_malformed(bad: object) -> None:
    with pytest.raises(BadMacError) as info:
        verify_mac(MASTER, b"data", bad)
    assert str(info.value) == "message authentication failed"


@given(st.binary(max_size=64), st.integers(0, 31), st.integers(1, 255))
def test_any_flipped_mac_bit_is_refused(data: bytes, position: int, flip: int) -> None:
    mac = bytearray(hmac.digest(MASTER, data, "sha256"))
    mac[position] ^= flip
    with pytest.raises(BadMacError):
        verify_mac(MASTER, data, mac.hex())


# -- keys --------------------------------------------------------------------------------------


def test_keys_differ_per_cabinet_site_and_direction() -> None:
    a = derive_cabinet_keys(MASTER, "S1", "C1")
    b = derive_cabinet_keys(MASTER, "S1", "C2")
    c = derive_cabinet_keys(MASTER, "S2", "C1")
    material = {a.command, a.report, b.command, b.report, c.command, c.report}
    assert len(material) == 6
    # "S1"/"C10" and "S1C"/"10" must not collide: the NUL separator keeps the info injective.
    assert (
        derive_cabinet_keys(MASTER, "S1", "C10").command
        != derive_cabinet_keys(MASTER, "S1C", "10").command
    )


def test_key_holders_hide_their_keys() -> None:
    site = SiteKey("S1", MASTER)
    keys = site.cabinet("C1")
    for text in (repr(site), str(site), repr(keys), str(keys)):
        assert MASTER.hex() not in text
        assert keys.command.hex() not in text
        assert "hidden" in text


def test_key_misuse_is_value_error() -> None:
    with pytest.raises(ValueError):
        derive_cabinet_keys(b"short", "S1", "C1")
    with pytest.raises(ValueError):
        derive_cabinet_keys(MASTER, "S1", "C/1")
    with pytest.raises(ValueError):
        CabinetKeys(bytes(32), bytes(32))
    with pytest.raises(ValueError):
        CabinetKeys.from_bytes(bytes(63))


def test_cabinet_keys_round_trip_through_provisioning_bytes() -> None:
    keys = derive_cabinet_keys(MASTER, "S1", "C1")
    again = CabinetKeys.from_bytes(keys.to_bytes())
    assert (again.command, again.report) == (keys.command, keys.report)


# -- counters and the recent cache -------------------------------------------------------------


@given(st.integers(0, MAX_COUNTER), st.integers(0, MAX_COUNTER))
def test_counter_must_be_strictly_above_the_last(counter: int, last: int) -> None:
    if counter > last:
        check_counter(counter, last)
    else:
        with pytest.raises(ReplayError) as info:
            check_counter(counter, last, channel="cmd")
        assert (info.value.counter, info.value.last, info.value.channel) == (counter, last, "cmd")


def test_recent_cache_forgets_the_oldest_insert() -> None:
    cache: RecentCache[int, str] = RecentCache(3)
    for n in range(5):
        cache.put(n, str(n))
    assert list(cache) == [2, 3, 4]
    assert cache.get(1) is None and cache.get(4) == "4"
    cache.get(2)  # reading does not refresh: order is insertion history only
    cache.put(5, "5")
    assert list(cache) == [3, 4, 5]
    assert RecentCache(2, dict(cache.items())).items() == [(4, "4"), (5, "5")]
