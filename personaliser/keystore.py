"""The file keystore: the embedded default for the key hierarchy (DESIGN §4).

It behaves like a small HSM: callers ask it to *sign* (Document Signer) or to *diversify* (perso master
key → a chip's static SCP03 keys); they never get the signing key or the master key.  A PKCS#11
keystore implements the same :class:`Keystore` protocol later.

Layout of the directory (0700; key files 0600, written with O_EXCL so an existing key is never
silently replaced)::

    csca.pem  csca.key   country signing CA (certificate, private key)
    ds.pem    ds.key     Document Signer
    perso-master.key     perso master key (hex), the root of the per-chip SCP03 keys
    data.key             data key (hex, 32 bytes): seals personal data at rest in the store
    cabinet.key          e-cabinet root key (hex, 32 bytes): each site's MQTT message key and the
                         audit log's HMAC key are derived from it (HKDF, RFC 5869)

Keys derived rather than stored are separated by HKDF ``info`` labels, so one never stands in for
another: the lookup key (keyed digests of HKIC and receipt numbers in the cabinet store) comes from
the data key; the site keys and the audit key from the cabinet key.
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509

from chip.crypto.diversify import diversify_kdf3
from chip.pki import (
    Credential,
    DocumentSigner,
    LocalDocumentSigner,
    create_csca,
    create_document_signer,
    load_certificate,
    load_private_key,
    save_certificate,
    save_private_key,
)
from chip.protocols.scp03 import StaticKeys
from ecabinet.security import KEY_BYTES, SiteKey, hkdf_sha256
from personaliser.errors import KeystoreError

__all__ = ["FileKeystore", "Keystore", "KeystoreError"]

MASTER_KEY_BYTES = 16  # AES-128 static keys, as the SCP03 traces in chip-vectors §9.1
DATA_KEY_BYTES = 32  # AES-256-GCM for personal data at rest (personaliser.store.crypto)
CABINET_KEY_BYTES = 32

# HKDF info labels (RFC 5869 §3.2): one per derived key, never reused for another purpose.
_LOOKUP_INFO = b"perso/v1 lookup digests"
_AUDIT_INFO = b"perso/v1 audit chain"
_SITE_INFO = b"perso/v1 site master:"


class Keystore(Protocol):
    def document_signer(self) -> DocumentSigner: ...

    def csca_certificate(self) -> x509.Certificate: ...

    def ds_certificate(self) -> x509.Certificate: ...

    def scp03_keys_for(self, kdd: bytes) -> StaticKeys: ...

    def data_key(self) -> bytes: ...


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class FileKeystore:
    """Keys in a private directory."""

    FILES = ("csca.pem", "csca.key", "ds.pem", "ds.key", "perso-master.key")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        missing = [name for name in self.FILES if not (self.path / name).is_file()]
        if missing:
            raise KeystoreError(f"keystore {self.path} is incomplete: missing {', '.join(missing)}")
        for name in ("csca.key", "ds.key", "perso-master.key"):
            mode = (self.path / name).stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeystoreError(f"{name} in {self.path} is readable by others (must be 0600)")
        self._csca = load_certificate(self.path / "csca.pem")
        self._ds = load_certificate(self.path / "ds.pem")
        self._signer: LocalDocumentSigner | None = None
        self._master: bytes | None = None

    def __repr__(self) -> str:
        return f"FileKeystore({str(self.path)!r})"

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        *,
        country: str = "CN",
        issuer: str = "HKSAR Immigration Department",
        key_alg: str = "ecdsa-p256",
        now: datetime | None = None,
    ) -> FileKeystore:
        """Create a test CSCA, a Document Signer and a perso master key; refuse to overwrite."""
        root = Path(path)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        existing = [name for name in cls.FILES if (root / name).exists()]
        if existing:
            raise KeystoreError(f"{root} already holds keys ({', '.join(existing)}); not replacing")
        when = now or datetime.now(UTC)
        csca = create_csca(
            country=country, common_name=f"{issuer} CSCA", key_alg=key_alg, not_before=when
        )
        ds = create_document_signer(
            csca, common_name=f"{issuer} Document Signer", key_alg=key_alg, not_before=when
        )
        save_private_key(csca.private_key, root / "csca.key")
        save_certificate(csca.certificate, root / "csca.pem")
        save_private_key(ds.private_key, root / "ds.key")
        save_certificate(ds.certificate, root / "ds.pem")
        _write_secret(root / "perso-master.key", os.urandom(MASTER_KEY_BYTES).hex().encode())
        cls.add_data_key(root)
        cls.add_cabinet_key(root)
        return cls(root)

    @staticmethod
    def add_data_key(path: str | os.PathLike[str]) -> None:
        """Provision the store's data key in a keystore made before it existed; never replaces one."""
        _write_secret(Path(path) / "data.key", os.urandom(DATA_KEY_BYTES).hex().encode())

    @staticmethod
    def add_cabinet_key(path: str | os.PathLike[str]) -> None:
        """Provision the e-cabinet root key in a keystore made before it existed; never replaces one."""
        _write_secret(Path(path) / "cabinet.key", os.urandom(CABINET_KEY_BYTES).hex().encode())

    def csca_certificate(self) -> x509.Certificate:
        return self._csca

    def ds_certificate(self) -> x509.Certificate:
        return self._ds

    def document_signer(self) -> DocumentSigner:
        if self._signer is None:
            key = load_private_key(self.path / "ds.key")
            self._signer = LocalDocumentSigner(Credential(key, self._ds))
        return self._signer

    def data_key(self) -> bytes:
        """The key that seals personal data in the store (AES-256-GCM)."""
        return self._secret("data.key", DATA_KEY_BYTES, "perso keys add-data-key")

    def lookup_key(self) -> bytes:
        """The key of the cabinet store's keyed digests of HKIC and receipt numbers: a digest
        finds a card without the store holding the number, and cannot be brute-forced from the
        small HKIC space without this key."""
        return hkdf_sha256(self.data_key(), info=_LOOKUP_INFO, length=KEY_BYTES)

    def site_key(self, site: str) -> SiteKey:
        """A site's e-cabinet master key; each cabinet's own keys derive from it
        (:meth:`ecabinet.security.SiteKey.cabinet`)."""
        root = self._secret("cabinet.key", CABINET_KEY_BYTES, "perso keys add-cabinet-key")
        return SiteKey(site, hkdf_sha256(root, info=_SITE_INFO + site.encode(), length=KEY_BYTES))

    def audit_key(self) -> bytes:
        """The HMAC key of the audit chain's entries and anchor (ecabinet.audit)."""
        root = self._secret("cabinet.key", CABINET_KEY_BYTES, "perso keys add-cabinet-key")
        return hkdf_sha256(root, info=_AUDIT_INFO, length=KEY_BYTES)

    def _secret(self, name: str, size: int, command: str) -> bytes:
        path = self.path / name
        if not path.is_file():
            raise KeystoreError(
                f"{self.path} has no {name}; add one with: {command} --dir {self.path}"
            )
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeystoreError(f"{name} in {self.path} is readable by others (must be 0600)")
        try:
            key = bytes.fromhex(path.read_text(encoding="ascii").strip())
        except ValueError as exc:
            raise KeystoreError(f"{name} is not hex") from exc
        if len(key) != size:
            raise KeystoreError(f"{name} must hold {size} bytes")
        return key

    def scp03_keys_for(self, kdd: bytes) -> StaticKeys:
        """The static SCP03 keys of the chip whose key diversification data is ``kdd``."""
        if self._master is None:
            text = (self.path / "perso-master.key").read_text(encoding="ascii").strip()
            try:
                self._master = bytes.fromhex(text)
            except ValueError as exc:
                raise KeystoreError("perso-master.key is not hex") from exc
        return diversify_kdf3(self._master, kdd)
