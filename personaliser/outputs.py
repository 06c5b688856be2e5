"""Files the engine hands to people and other tools: written atomically, so a crash or a concurrent
reader never sees half a report."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509

from chip.pki import save_certificate

__all__ = ["publish_pki", "write_bytes_atomic", "write_json"]

_tmp_names = itertools.count()


class _Certificates(Protocol):
    def csca_certificate(self) -> x509.Certificate: ...

    def ds_certificate(self) -> x509.Certificate: ...


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and rename (POSIX rename is atomic).

    The temporary name carries the pid and a counter so concurrent writers never share one.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_tmp_names)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8"))


def publish_pki(keystore: _Certificates, out: Path) -> Path:
    """Copy the CSCA and Document Signer certificates (never keys) to ``out/pki``."""
    pki = out / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    for name, cert in (
        ("csca.pem", keystore.csca_certificate()),
        ("ds.pem", keystore.ds_certificate()),
    ):
        (pki / name).unlink(missing_ok=True)
        save_certificate(cert, pki / name)
    return pki
