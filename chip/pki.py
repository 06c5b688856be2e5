"""A test PKI for EF.SOD: a CSCA and its Document Signers, and the signer seam that EF.SOD uses.

Certificate profile per ICAO Doc 9303 Part 12 (8th ed., 2021), 7.1.1 (RFC 5280 profile for CSCA
and Document Signer certificates).  Key lifetimes follow Part 12, 5 (key management): a Document
Signer key signs for a few months, while its certificate stays valid for that period plus the
longest document validity, so that a reader can still check a ten-year-old card.

The signer is a small seam (:class:`DocumentSigner`): a local key today, a PKCS#11 token later.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from asn1crypto import algos, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from chip.random import RandomSource, system_random

__all__ = [
    "KEY_ALGORITHMS",
    "OID_DOCUMENT_TYPE_LIST",
    "Credential",
    "DocumentSigner",
    "LocalDocumentSigner",
    "PrivateKey",
    "create_csca",
    "create_document_signer",
    "document_type_list",
    "load_certificate",
    "load_private_key",
    "save_certificate",
    "save_private_key",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: Part 12, 7.1.1 (DS certificates): id-icao-mrtd-security-extensions-documentTypeList.
OID_DOCUMENT_TYPE_LIST = x509.ObjectIdentifier("2.23.136.1.1.6.2")

#: Key algorithms this test PKI issues; ECDSA P-256, the default, signs in tens of microseconds.
KEY_ALGORITHMS = ("ecdsa-p256", "ecdsa-brainpoolP256r1", "rsa-pss-3072")

# Part 12, 5 suggests a CSCA key usage of 3-5 years and a certificate validity of that plus the
# longest DS certificate validity; a DS key usage of up to 3 months plus a 10-year document.
_CSCA_VALIDITY_DAYS = 15 * 365 + 4
_DS_VALIDITY_DAYS = 10 * 365 + 3 + 92

# RFC 4055, 3.1: RSASSA-PSS with SHA-256, MGF1-SHA-256 and a salt as long as the hash.
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


@dataclass(frozen=True)
class Credential:
    """A private key and the certificate for its public key."""

    private_key: PrivateKey = field(repr=False)
    certificate: x509.Certificate


class DocumentSigner(Protocol):
    """What EF.SOD needs from a Document Signer: its certificate, its algorithm, a signature.

    ``sign`` receives the DER of the SignerInfo's signedAttrs (RFC 5652, 5.4) and returns the
    signature octets as CMS carries them (an Ecdsa-Sig-Value for ECDSA, RFC 5753 7.2).
    """

    @property
    def certificate(self) -> x509.Certificate: ...

    @property
    def signature_algorithm(self) -> bytes:
        """DER of the AlgorithmIdentifier written into SignerInfo.signatureAlgorithm."""
        ...

    def sign(self, data: bytes) -> bytes: ...


class LocalDocumentSigner:
    """A :class:`DocumentSigner` over a key held in process memory."""

    __slots__ = ("_algorithm", "_certificate", "_key")

    def __init__(self, credential: Credential) -> None:
        self._key = credential.private_key
        self._certificate = credential.certificate
        self._algorithm = _cms_signature_algorithm(self._key)

    def __repr__(self) -> str:
        return f"LocalDocumentSigner(subject={self._certificate.subject.rfc4514_string()!r})"

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def signature_algorithm(self) -> bytes:
        return self._algorithm

    def sign(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            # RFC 6979 nonces: the same key, attributes and time give the same SOD, so worked
            # examples reproduce byte for byte and no RNG failure can leak the key.
            return key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        return key.sign(data, _PSS, hashes.SHA256())


def create_csca(
    *,
    country: str = "CN",
    common_name: str,
    key_alg: str = "ecdsa-p256",
    not_before: datetime | None = None,
    validity_days: int = _CSCA_VALIDITY_DAYS,
    private_key_usage_days: int | None = None,
    random: RandomSource = system_random,
) -> Credential:
    """A self-signed CSCA certificate (Part 12, 7.1.1) and its key.

    ``private_key_usage_days`` bounds the privateKeyUsagePeriod (default: the whole validity).
    """
    _check_country(country)
    start = _start(not_before)
    end = start + timedelta(days=validity_days)
    key = _generate_key(key_alg)
    name = _name(country, common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    usage_end = (
        end if private_key_usage_days is None else start + timedelta(days=private_key_usage_days)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial(random))
        .not_valid_before(start)
        .not_valid_after(end)
        # Part 12, 7.1.1: CA, and no intermediate CA below a CSCA (pathLen 0).
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        # Part 12, 7.1.1 requires privateKeyUsagePeriod in CSCA certificates (optional for a DS):
        # the key stops issuing long before the certificate expires (Part 12, 5).
        .add_extension(x509.PrivateKeyUsagePeriod(start, usage_end), critical=False)
    )
    return Credential(key, _sign_certificate(builder, key))


def create_document_signer(
    csca: Credential,
    *,
    common_name: str,
    key_alg: str = "ecdsa-p256",
    not_before: datetime | None = None,
    validity_days: int = _DS_VALIDITY_DAYS,
    document_types: Sequence[str] = ("ID",),
    random: RandomSource = system_random,
) -> Credential:
    """A Document Signer certificate issued by ``csca`` (Part 12, 7.1.1) and its key.

    The country is the CSCA's: a DS signs only for its own State (Part 12, 7.1.1).
    """
    issuer = csca.certificate.subject
    countries = issuer.get_attributes_for_oid(NameOID.COUNTRY_NAME)
    if len(countries) != 1:
        raise ValueError("CSCA subject must carry exactly one countryName")
    start = _start(not_before)
    end = start + timedelta(days=validity_days)
    if start < csca.certificate.not_valid_before_utc or end > csca.certificate.not_valid_after_utc:
        raise ValueError("DS certificate validity must lie within the CSCA certificate validity")
    key = _generate_key(key_alg)
    csca_ski = csca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(str(countries[0].value), common_name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(_serial(random))
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(csca_ski.value),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        # Non-critical: readers that do not know the ICAO OID (openssl among them) must still
        # accept the certificate; a critical unknown extension would make them reject it.
        .add_extension(
            x509.UnrecognizedExtension(OID_DOCUMENT_TYPE_LIST, document_type_list(document_types)),
            critical=False,
        )
    )
    return Credential(key, _sign_certificate(builder, csca.private_key))


class _DocumentTypeListSyntax(core.Sequence):  # type: ignore[misc]
    # Part 12, 7.1.1: DocumentTypeListSyntax ::= SEQUENCE { version INTEGER {v0(0)},
    #   docTypeList SET OF DocumentType }, DocumentType ::= PrintableString (SIZE (1..2)).
    _fields = [  # noqa: RUF012 - asn1crypto's schema hook
        ("version", core.Integer),
        ("docTypeList", core.SetOf, {"spec": core.PrintableString}),
    ]


def document_type_list(document_types: Sequence[str]) -> bytes:
    """DER of the DocumentTypeList extension value listing MRZ document codes ("P", "ID", ...)."""
    if not document_types:
        raise ValueError("a Document Signer must list at least one document type")
    for code in document_types:
        if not (1 <= len(code) <= 2 and code.isascii() and code.isalpha() and code.isupper()):
            raise ValueError(f"document type {code!r} is not a 1-2 letter MRZ document code")
    value = _DocumentTypeListSyntax({"version": 0, "docTypeList": list(document_types)})
    der: bytes = value.dump(force=True)
    return der


def save_private_key(key: PrivateKey, path: Path | str, *, password: bytes | None = None) -> None:
    """Write ``key`` as PKCS#8 PEM to a new file that only its owner can read.

    The file is created with mode 0600 in the same call that creates it (O_EXCL), so it is never
    readable by others, not even for a moment, and an existing file is never overwritten.
    """
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password is not None
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def load_private_key(path: Path | str, *, password: bytes | None = None) -> PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError("only EC and RSA Document Signer / CSCA keys are supported")
    return key


def save_certificate(certificate: x509.Certificate, path: Path | str) -> None:
    Path(path).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def load_certificate(path: Path | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _check_country(country: str) -> None:
    # Part 12, 7.1.1: countryName is the ISO 3166-1 alpha-2 code, upper case.
    if not (len(country) == 2 and country.isascii() and country.isalpha() and country.isupper()):
        raise ValueError("country must be an ISO 3166-1 alpha-2 code such as 'CN'")


def _name(country: str, common_name: str) -> x509.Name:
    if not common_name:
        raise ValueError("common_name must not be empty")
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, country),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _start(not_before: datetime | None) -> datetime:
    if not_before is None:
        return datetime.now(UTC).replace(microsecond=0)
    if not_before.tzinfo is None:
        raise ValueError("not_before must be timezone-aware")
    return not_before.astimezone(UTC).replace(microsecond=0)


def _serial(random: RandomSource) -> int:
    # RFC 5280 4.1.2.2 / Part 12 7.1.1: a positive integer of at most 20 octets.  16 random octets
    # cut to 127 bits and made odd (so never zero) encode in at most 16 octets.
    return (int.from_bytes(random(16), "big") >> 1) | 1


def _generate_key(key_alg: str) -> PrivateKey:
    if key_alg == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_alg == "ecdsa-brainpoolP256r1":
        return ec.generate_private_key(ec.BrainpoolP256R1())
    if key_alg == "rsa-pss-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"unknown key algorithm {key_alg!r}; choose one of {KEY_ALGORITHMS}")


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _sign_certificate(builder: x509.CertificateBuilder, issuer_key: PrivateKey) -> x509.Certificate:
    if isinstance(issuer_key, rsa.RSAPrivateKey):
        return builder.sign(issuer_key, hashes.SHA256(), rsa_padding=_PSS)
    return builder.sign(issuer_key, hashes.SHA256())


def _cms_signature_algorithm(key: PrivateKey) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # RFC 5758 3.2: ecdsa-with-SHA256, parameters absent.
        algorithm = algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"})
    else:
        # RFC 4055 3.1, with the NULL hash parameters RFC 4055 generates and the BSI reference
        # EF.SOD carries.
        sha256 = {"algorithm": "sha256", "parameters": core.Null()}
        algorithm = algos.SignedDigestAlgorithm(
            {
                "algorithm": "rsassa_pss",
                "parameters": {
                    "hash_algorithm": sha256,
                    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": sha256},
                    "salt_length": 32,
                    "trailer_field": "trailer_field_bc",
                },
            }
        )
    der: bytes = algorithm.dump()
    return der
