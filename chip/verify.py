"""The readback verifier: what a border reader would conclude from the chip, knowing only the MRZ.

Checks, each adding a reason when it fails (never stopping at the first):

1. BAC and SM reads succeed (done by :func:`chip.reader.read_card`; a failure there is a reason);
2. passive authentication (ICAO 9303-11 §5.1): the EF.SOD signature verifies with the Document Signer
   certificate it carries, that certificate chains to a trusted CSCA, and every data group's hash
   equals the hash in the LDSSecurityObject, with no data group missing or extra;
3. EF.COM lists exactly the data groups the EF.SOD covers;
4. DG1 equals the DG1 the application should produce (the MRZ agrees with the application).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from chip.apdu import SW
from chip.errors import AuthenticationError, ChipError, StatusWordError, VerificationError
from chip.lds.com import EFCom
from chip.lds.sod import EFSod
from chip.lds.tags import EF_TABLE, by_name, by_tag
from chip.random import RandomSource
from chip.reader import CardReadout, read_card
from chip.transport.base import Flow

__all__ = ["Verdict", "read_and_verify", "verify_readout"]

_DG_TAGS = {ef.tag for ef in EF_TABLE if ef.dg is not None}


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]
    readout: CardReadout
    #: BAC was refused (wrong MRZ): nothing could be read
    access_denied: bool = False

    def __repr__(self) -> str:
        return f"Verdict(passed={self.passed}, reasons={self.reasons})"


def verify_readout(
    readout: CardReadout,
    *,
    trust_anchors: Sequence[x509.Certificate],
    expected_dg1: bytes | None = None,
    at: datetime | None = None,
) -> Verdict:
    reasons: list[str] = []
    files = readout.files
    sod_bytes = files.get("EF.SOD")
    dg_files = {by_name(n).dg or 0: data for n, data in files.items() if n.startswith("DG")}
    if sod_bytes is None:
        reasons.append("EF.SOD missing")
    else:
        try:
            sod = EFSod.from_bytes(sod_bytes)
            try:
                sod.verify_signature(trust_anchors, at=at)
            except VerificationError as exc:
                reasons.extend(f"passive authentication: {r}" for r in exc.reasons or (str(exc),))
            reasons.extend(sod.check_hashes(dg_files))
            covered = set(sod.dg_hashes)
            if "EF.COM" in files:
                com = EFCom.from_bytes(files["EF.COM"])
                listed = {by_tag(t).dg for t in com.tags if t in _DG_TAGS}
                if len(com.tags) != len(listed) or listed != covered:
                    reasons.append("EF.COM does not list exactly the data groups EF.SOD covers")
        except ChipError as exc:
            reasons.append(f"EF.SOD unreadable: {type(exc).__name__}")
    if "EF.COM" not in files:
        reasons.append("EF.COM missing")
    if expected_dg1 is not None:
        dg1 = files.get("DG1")
        if dg1 is None:
            reasons.append("DG1 missing")
        elif not hmac.compare_digest(dg1, expected_dg1):
            reasons.append("DG1 differs from the application")
    return Verdict(not reasons, tuple(reasons), readout)


def read_and_verify(
    mrz_information: str,
    rng: RandomSource,
    *,
    trust_anchors: Sequence[x509.Certificate],
    expected_dg1: bytes | None = None,
    extended: bool = True,
    at: datetime | None = None,
) -> Flow[Verdict]:
    """Read the card with BAC and verify it; a protocol failure becomes a failed verdict."""
    try:
        readout = yield from read_card(mrz_information, rng, extended=extended)
    except ChipError as exc:
        step = getattr(exc, "step", None)
        where = f" at {step}" if step else ""
        denied = isinstance(exc, AuthenticationError) or (
            isinstance(exc, StatusWordError) and exc.sw == SW.VERIFICATION_FAILED
        )
        reason = f"readback failed{where}: {type(exc).__name__}: {exc}"
        return Verdict(False, (reason,), CardReadout(), access_denied=denied)
    return verify_readout(readout, trust_anchors=trust_anchors, expected_dg1=expected_dg1, at=at)
