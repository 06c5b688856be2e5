"""End-to-end message security: canonical JSON, per-cabinet keys, HMAC-SHA256, counters.

The broker's TLS and per-device ACLs protect the links; these MACs protect the *messages*, end to
end, so a broker operator, a leaked broker password or a replayed capture cannot open a slot
(DESIGN §6).

- **Canonical encoding**: JSON with sorted keys, no insignificant whitespace, UTF-8, no floats.
  For that value set it is the same byte string as RFC 8785 (JCS) gives, so a cabinet firmware in
  another language can reproduce it.  The MAC covers the canonical encoding of the whole message
  object without its ``mac`` member.
- **MAC**: HMAC-SHA256 (RFC 2104, FIPS 198-1) untruncated, as 64 lowercase hex digits; compared
  with ``hmac.compare_digest``.
- **Keys**: one secret per site.  Each cabinet's keys are HKDF-SHA256 (RFC 5869) of the site
  master key with the site and cabinet ids as ``info``; the controller derives them on demand and
  a cabinet is provisioned with its own keys only, so opening one cabinet reveals neither the site
  key nor another cabinet's keys.  The 64 bytes of output are two keys, one per direction: a
  command MAC'd by the controller can never verify as a report from the cabinet, or back.
- **Counters**: every message carries its sender's counter; a receiver accepts a counter only if
  strictly above the last it accepted from that sender (:func:`check_counter`).  Counters stay in
  the JSON safe-integer range (RFC 8259 section 6, I-JSON RFC 7493 2.2) so any JSON parser reads
  them exactly.
"""

from __future__ import annotations

import hmac
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Final, Generic, TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ecabinet.errors import BadMacError, ReplayError
from ecabinet.topics import check_id

__all__ = [
    "KEY_BYTES",
    "MAC_HEX_CHARS",
    "MAX_COUNTER",
    "CabinetKeys",
    "RandomSource",
    "RecentCache",
    "SiteKey",
    "canonical_json",
    "check_counter",
    "compute_mac",
    "derive_cabinet_keys",
    "hkdf_sha256",
    "verify_mac",
]

#: Same shape as ``chip.random.RandomSource`` (``ecabinet`` must not import ``chip``): n -> n bytes.
RandomSource = Callable[[int], bytes]

KEY_BYTES: Final = 32
MAC_HEX_CHARS: Final = 64
#: 2**53 - 1: the largest integer every JSON parser reads exactly (RFC 7493 2.2).
MAX_COUNTER: Final = 2**53 - 1

_MAC_HEX: Final = re.compile(r"[0-9a-f]{64}")
_KDF_LABEL: Final = b"perso/v1 cabinet-mac"


def canonical_json(value: Mapping[str, object]) -> bytes:
    """The canonical encoding: sorted keys, no spaces, UTF-8 without ``\\u`` escapes for non-ASCII.

    ``ensure_ascii=False`` and the default escaping of control characters match RFC 8785 3.2.2.2;
    key order by code point matches its UTF-16 order for the ASCII keys the protocol uses.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def hkdf_sha256(ikm: bytes, *, info: bytes, length: int, salt: bytes | None = None) -> bytes:
    """HKDF-Extract then -Expand with SHA-256 (RFC 5869 2.2, 2.3)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


class CabinetKeys:
    """One cabinet's two MAC keys: ``command`` (controller -> cabinet) and ``report`` (back)."""

    __slots__ = ("_command", "_report")

    def __init__(self, command: bytes, report: bytes) -> None:
        if len(command) != KEY_BYTES or len(report) != KEY_BYTES:
            raise ValueError("cabinet keys are 32 bytes each")
        if hmac.compare_digest(command, report):
            raise ValueError("the command and report keys must differ")
        self._command = bytes(command)
        self._report = bytes(report)

    @classmethod
    def from_bytes(cls, material: bytes) -> CabinetKeys:
        """From the 64 bytes a cabinet is provisioned with (command key, then report key)."""
        if len(material) != 2 * KEY_BYTES:
            raise ValueError("cabinet key material is 64 bytes")
        return cls(material[:KEY_BYTES], material[KEY_BYTES:])

    def to_bytes(self) -> bytes:
        """The 64 bytes to provision a cabinet with.  Key material: keep it out of logs."""
        return self._command + self._report

    @property
    def command(self) -> bytes:
        return self._command

    @property
    def report(self) -> bytes:
        return self._report

    def __repr__(self) -> str:
        return "CabinetKeys(<hidden>)"


def derive_cabinet_keys(site_master_key: bytes, site: str, cabinet: str) -> CabinetKeys:
    """HKDF-SHA256(IKM = site master key, salt absent, info = label NUL site NUL cabinet, L = 64).

    No salt: the master key is already uniformly random, for which RFC 5869 3.1 says a salt adds
    little.  Ids cannot contain NUL (:func:`~ecabinet.topics.check_id`), so the info string is an
    unambiguous encoding of (site, cabinet): no two cabinets anywhere share a key, even if two
    sites were mistakenly given the same master key.
    """
    if len(site_master_key) < KEY_BYTES:
        raise ValueError("a site master key is at least 32 bytes")
    info = b"\x00".join(
        (_KDF_LABEL, check_id(site, "site").encode(), check_id(cabinet, "cabinet").encode())
    )
    return CabinetKeys.from_bytes(hkdf_sha256(site_master_key, info=info, length=2 * KEY_BYTES))


class SiteKey:
    """A site's master key: the one secret a controller holds.  Derived keys are cached."""

    __slots__ = ("_cache", "_master", "site")

    def __init__(self, site: str, master: bytes) -> None:
        check_id(site, "site")
        if len(master) < KEY_BYTES:
            raise ValueError("a site master key is at least 32 bytes")
        self.site = site
        self._master = bytes(master)
        self._cache: dict[str, CabinetKeys] = {}

    def cabinet(self, cabinet: str) -> CabinetKeys:
        keys = self._cache.get(cabinet)
        if keys is None:
            keys = self._cache[cabinet] = derive_cabinet_keys(self._master, self.site, cabinet)
        return keys

    def __repr__(self) -> str:
        return f"SiteKey(site={self.site!r}, <hidden>)"


def compute_mac(key: bytes, canonical: bytes) -> str:
    return hmac.digest(key, canonical, "sha256").hex()


def verify_mac(key: bytes, canonical: bytes, mac: object, *, channel: str | None = None) -> None:
    """``BadMacError`` unless ``mac`` is 64 lowercase hex digits equal to the HMAC of ``canonical``."""
    if not isinstance(mac, str) or _MAC_HEX.fullmatch(mac) is None:
        raise BadMacError(channel=channel)
    if not hmac.compare_digest(hmac.digest(key, canonical, "sha256"), bytes.fromhex(mac)):
        raise BadMacError(channel=channel)


def check_counter(counter: int, last: int, *, channel: str | None = None) -> None:
    """``ReplayError`` unless ``counter > last``.  Gaps are fine: a sender may skip counters."""
    if counter <= last:
        raise ReplayError(counter, last, channel=channel)


K = TypeVar("K")
V = TypeVar("V")


class RecentCache(Generic[K, V]):
    """A bounded map that forgets its least recently *inserted* entry first.

    Used for the command ids a cabinet has answered and the messages a controller has seen: the
    bound keeps the persistent state small, and insertion order (not access order) keeps the
    persisted order a function of the message history alone.
    """

    __slots__ = ("_items", "limit")

    def __init__(self, limit: int, items: Mapping[K, V] | None = None) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._items: OrderedDict[K, V] = OrderedDict()
        for key, value in (items or {}).items():
            self.put(key, value)

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def items(self) -> list[tuple[K, V]]:
        """Oldest first."""
        return list(self._items.items())
