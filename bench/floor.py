"""The crypto floors of one card: what no implementation of the line can avoid computing.

Two floors, both measured in the same process and run as the line (``bench.engine``):

- the **bulk floor** (``bulk_floor_ms``): the EF.SOD signature, one hash per LDS file, and one
  encrypt + MAC pass over all the bytes written (SCP03) and over all the bytes read back (BAC), each
  as one long message.  A lower bound that no protocol reaches: the standards cut the bytes into
  APDUs, and every APDU is its own cryptogram and MAC.
- the **protocol floor** (``protocol_floor_ms``): the cryptographic operations the standards
  prescribe for the host, one card, at the message sizes the line really uses (recorded from one
  card by :func:`record_profile`), replayed straight through the primitives with no protocol logic:

  * building: one SHA-256 per LDS file and the EF.SOD signature (ICAO Doc 9303 Part 10, 4.6.2);
  * the SCP03 channel (GlobalPlatform Card Spec v2.3 Amd D): the chip's static keys diversified
    from the master (three KDF runs, 6.2.1), the session keys (three, 6.2.1), card and host
    cryptograms (6.2.2.2-3), and per command the ICV, C-DECRYPTION and C-MAC (6.2.4, 6.2.6);
  * BAC (Doc 9303 Part 11, 4.3 and 9.7): K_seed and its two keys, the mutual authentication's
    cryptogram and MAC and the chip's, the session keys; per command the data encrypted and
    MACed, per response its MAC checked and data decrypted (9.8);
  * passive authentication (Part 11, 5.1): each file read hashed again and the EF.SOD signature
    verified (the Document Signer's certificate against the CSCA is checked once per signer, not
    per card: it is the same for every card of the run).

The line's host cost is compared with the protocol floor (``ratio_to_floor``, the issue 5 target
is 3x); the bulk floor is reported next to it so that the older, stricter figure stays visible.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from chip.apdu import CommandAPDU, ResponseAPDU
from chip.crypto.aes import aes_cbc_encrypt, aes_cmac, aes_ecb_encrypt
from chip.crypto.des import retail_mac, tdes_decrypt, tdes_encrypt
from chip.crypto.padding import pad
from chip.crypto.sm import SecureMessaging
from chip.crypto.sp800108 import scp03_kdf
from chip.perso import build_plan
from chip.pki import DocumentSigner
from chip.protocols.scp03 import Scp03HostSession
from personaliser.chipstage import personalise_card
from personaliser.keystore import FileKeystore
from personaliser.synth import synth_applications

__all__ = ["CardProfile", "bulk_floor_ms", "protocol_floor_ms", "record_profile"]


@dataclass(frozen=True, slots=True)
class CardProfile:
    """The message sizes of one card's host-side protocols (no content: lengths only)."""

    data_groups: tuple[bytes, ...]  # hashed into EF.SOD at build, and again at readback
    scp03_commands: tuple[int, ...]  # plain data length of every command sent under SCP03
    bac_commands: tuple[tuple[int, int], ...]  # (command data, response data) under BAC SM

    @property
    def bytes_written(self) -> int:
        return sum(self.scp03_commands)

    @property
    def bytes_read(self) -> int:
        return sum(r for _, r in self.bac_commands)


@contextmanager
def _recording(target: type, name: str, record: Callable[[Any], None]) -> Iterator[None]:
    original = getattr(target, name)

    def wrapper(self: object, message: Any) -> Any:
        result = original(self, message)
        record(result if name == "unwrap_response" else message)
        return result

    setattr(target, name, wrapper)
    try:
        yield
    finally:
        setattr(target, name, original)


def record_profile(keystore: FileKeystore, *, seed: int = 0) -> CardProfile:
    """Personalise and read back one synthetic card as the in-process line does (extended
    reads, 4 KiB writes), recording the host's secure-messaging message sizes."""
    app = next(synth_applications(1, seed=seed))
    scp03: list[int] = []
    commands: list[int] = []
    responses: list[int] = []

    def on_scp03(cmd: CommandAPDU) -> None:
        scp03.append(len(cmd.data))

    def on_command(cmd: CommandAPDU) -> None:
        commands.append(len(cmd.data))

    def on_response(resp: ResponseAPDU) -> None:
        responses.append(len(resp.data))

    with (
        _recording(Scp03HostSession, "wrap_command", on_scp03),
        _recording(SecureMessaging, "wrap_command", on_command),
        _recording(SecureMessaging, "unwrap_response", on_response),
    ):
        outcome, _chip, _verdict, plan = personalise_card(app, keystore)
    if not outcome.passed or len(commands) != len(responses):
        raise RuntimeError("the profile card did not personalise and verify cleanly")
    return CardProfile(
        tuple(plan.dg_files.values()),
        tuple(scp03),
        tuple(zip(commands, responses, strict=True)),
    )


def bulk_floor_ms(keystore: FileKeystore, *, rounds: int, seed: int = 0) -> float:
    """CPU milliseconds of the bulk floor (module docstring), averaged over ``rounds``."""
    app = next(synth_applications(1, seed=seed))
    signer = keystore.document_signer()
    files = [f.data for f in build_plan(app.to_holder(), signer).files]
    payload = b"".join(files)
    aes_key, des_key = os.urandom(16), os.urandom(16)
    padded16, padded8 = pad(payload, 16), pad(payload, 8)

    def floor() -> bytes:
        for data in files:
            hashlib.sha256(data).digest()
        signer.sign(payload[:200])
        aes_cmac(aes_key, aes_cbc_encrypt(aes_key, padded16, bytes(16)))
        return retail_mac(des_key, tdes_encrypt(des_key, padded8), padded=True)

    return _timed(floor, rounds)


def _timed(work: Callable[[], object], rounds: int) -> float:
    work()  # warm the key objects and the signer's caches, as the line's first card does
    start = time.process_time()
    for _ in range(rounds):
        work()
    return 1000.0 * (time.process_time() - start) / rounds


def _sm_header(data_length: int) -> int:
    # Bytes MACed besides the data object: the padded header (8) and the DO tags and lengths.
    return 8 + (4 if data_length < 128 else 6)


def protocol_floor_ms(
    keystore: FileKeystore, profile: CardProfile, *, rounds: int, seed: int = 0
) -> float:
    """CPU milliseconds of the protocol floor (module docstring), averaged over ``rounds``."""
    signer: DocumentSigner = keystore.document_signer()
    public = signer.certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise RuntimeError("the protocol floor expects an ECDSA Document Signer")
    signed = os.urandom(200)  # the DER of the signed attributes is about this long
    signature = signer.sign(signed)
    master, kdd = os.urandom(16), os.urandom(10)
    mrz_information = "L898902C<369080619406236"  # Doc 9303 Part 11, Appendix D.2
    rnd = os.urandom(32)
    ssc = bytes(8)
    plaintexts = {n: os.urandom(n) for n in {*profile.scp03_commands}}
    bac_data = {n: os.urandom(n) for c, r in profile.bac_commands for n in (c, r)}
    bac_key = os.urandom(16)
    # What the chip sends back is ciphertext already: made here, outside the clock.
    answers = {r: tdes_encrypt(bac_key, pad(bac_data[r], 8)) for _, r in profile.bac_commands if r}

    def floor() -> None:
        # Building: a hash per data group, the signature.
        for data in profile.data_groups:
            hashlib.sha256(data).digest()
        signer.sign(signed)
        # SCP03: static keys from the master, session keys, cryptograms, commands.
        static = [scp03_kdf(master, constant, 128, kdd) for constant in (1, 2, 3)]
        s_enc, s_mac, _s_rmac = (scp03_kdf(static[0], c, 128, rnd[:16]) for c in (4, 6, 7))
        scp03_kdf(s_mac, 0, 64, rnd[:16])  # card cryptogram, checked
        chain = scp03_kdf(s_mac, 1, 64, rnd[:16]) + bytes(8)  # host cryptogram
        for n in profile.scp03_commands:
            body = b""
            if n:
                icv = aes_ecb_encrypt(s_enc, bytes(16))
                body = aes_cbc_encrypt(s_enc, pad(plaintexts[n], 16), icv)
            chain = aes_cmac(s_mac, chain + bytes(5) + body)
        # BAC: keys from the MRZ, mutual authentication both ways, session keys.
        seed_key = hashlib.sha1(mrz_information.encode("ascii")).digest()[:16]
        k_enc, k_mac = (hashlib.sha1(seed_key + bytes((0, 0, 0, c))).digest()[:16] for c in (1, 2))
        e_ifd = tdes_encrypt(k_enc, rnd)
        retail_mac(k_mac, e_ifd)
        retail_mac(k_mac, e_ifd)  # the chip's answer, checked
        tdes_decrypt(k_enc, e_ifd)
        ks_enc, ks_mac = (
            hashlib.sha1(rnd[:16] + bytes((0, 0, 0, c))).digest()[:16] for c in (1, 2)
        )
        for c, r in profile.bac_commands:
            encrypted = tdes_encrypt(ks_enc, pad(bac_data[c], 8)) if c else b""
            retail_mac(ks_mac, pad(ssc + bytes(_sm_header(c)) + encrypted, 8), padded=True)
            body = answers.get(r, b"")
            retail_mac(ks_mac, pad(ssc + bytes(_sm_header(r) - 8) + body, 8), padded=True)
            if body:
                tdes_decrypt(bac_key, body)
        # Passive authentication: every file hashed again, the SOD's signature verified.
        for data in profile.data_groups:
            hashlib.sha256(data).digest()
        public.verify(signature, signed, ec.ECDSA(hashes.SHA256()))  # as chip.pki signs

    return _timed(floor, rounds)
