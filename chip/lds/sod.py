"""EF.SOD, the Document Security Object: the data group hashes, signed by the Document Signer.

ICAO Doc 9303 Part 10 (8th ed., 2021), 4.6.2: EF.SOD is ``77 L ContentInfo``, a CMS SignedData
(RFC 5652) whose encapsulated content is the DER of an LDSSecurityObject::

    LDSSecurityObject ::= SEQUENCE {
        version             LDSSecurityObjectVersion,         -- v0, or v1 with ldsVersionInfo
        hashAlgorithm       DigestAlgorithmIdentifier,
        dataGroupHashValues SEQUENCE SIZE (2..ub-DataGroups) OF DataGroupHash,
        ldsVersionInfo      LDSVersionInfo OPTIONAL }
    DataGroupHash ::= SEQUENCE { dataGroupNumber INTEGER, dataGroupHashValue OCTET STRING }

Passive authentication (Part 11) is :meth:`EFSod.verify_signature` (signature and chain) plus
:meth:`EFSod.check_hashes` (the files read back against the signed hashes).

Encoding.  asn1crypto encodes every fixed piece (OIDs, algorithm identifiers, the signer's
IssuerAndSerialNumber, times) and interprets algorithm parameters; the per-card envelope is walked
with asn1crypto's TLV parser and assembled with :func:`_tlv`.  Going through asn1crypto's object
model instead cost about 0.5 ms to parse and 0.7 ms to build an SOD on the development host, several
times the budget of a line that builds and checks one per card.  The tests re-encode the output
through asn1crypto's object model and require identical bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any, NamedTuple

from asn1crypto import algos, cms, core, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from chip.errors import EncodingError, VerificationError
from chip.pki import DocumentSigner

__all__ = ["OID_LDS_SECURITY_OBJECT", "EFSod", "build_sod", "build_sod_der"]

#: Part 10, 4.6.2: id-icao-mrtd-security-ldsSecurityObject.
OID_LDS_SECURITY_OBJECT = "2.23.136.1.1.1"
# Belgian and French documents carry this pre-standard OID; JMRTD and pymrtd accept it on read.
_LEGACY_LDS_SECURITY_OBJECT = "1.3.27.1.1.1"

_MAX_DG = 16  # ub-DataGroups, Part 10 4.6.2

_HASHES: dict[str, Callable[[bytes], Any]] = {
    "sha1": hashlib.sha1,  # read only: legacy documents
    "sha224": hashlib.sha224,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
_BUILD_DIGESTS = ("sha224", "sha256", "sha384", "sha512")  # new SODs: SHA-2 only
_CRYPTO_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

# Fixed DER pieces, encoded once by asn1crypto.  OIDs are compared by their content octets.
_DIGEST_ALGORITHM_DER: dict[str, bytes] = {
    # RFC 5754 2: SHA-2 AlgorithmIdentifiers are generated with the parameters absent.
    name: algos.DigestAlgorithm({"algorithm": name}).dump()
    for name in _BUILD_DIGESTS
}
_DIGEST_NAMES: dict[bytes, str] = {algos.DigestAlgorithmId(name).contents: name for name in _HASHES}
_OID_SIGNED_DATA: bytes = cms.ContentType("signed_data").contents
_OID_LDS_SO: bytes = core.ObjectIdentifier(OID_LDS_SECURITY_OBJECT).contents
_OID_LDS_SO_LEGACY: bytes = core.ObjectIdentifier(_LEGACY_LDS_SECURITY_OBJECT).contents
_OID_CONTENT_TYPE: bytes = cms.CMSAttributeType("content_type").contents
_OID_MESSAGE_DIGEST: bytes = cms.CMSAttributeType("message_digest").contents
_OID_SIGNING_TIME: bytes = cms.CMSAttributeType("signing_time").contents
_CONTENT_TYPE_ATTRIBUTE: bytes = cms.CMSAttribute(
    {"type": "content_type", "values": [OID_LDS_SECURITY_OBJECT]}
).dump()

# What cryptography raises on a damaged certificate, beyond InvalidSignature.
_CERTIFICATE_ERRORS = (
    ValueError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)

# asn1crypto.parser classes and methods.
_UNIVERSAL, _APPLICATION, _CONTEXT = 0, 1, 2
_CONSTRUCTED = 1
_INTEGER, _OCTET_STRING, _OID, _SEQUENCE, _SET = 2, 4, 6, 16, 17


class _Tlv(NamedTuple):
    class_: int
    constructed: bool
    tag: int
    contents: bytes
    encoding: bytes

    def is_(self, class_: int, tag: int) -> bool:
        return self.class_ == class_ and self.tag == tag


@dataclass(frozen=True, slots=True)
class _Parsed:
    signed_data_der: bytes
    signed_data_version: int
    digest_algorithms: frozenset[bytes]  # OID contents
    econtent_type: bytes  # OID contents
    econtent: bytes
    version: int
    digest_algorithm: str
    dg_hashes: dict[int, bytes]
    certificates: tuple[bytes, ...]
    sid: _Tlv
    signer_digest: bytes  # OID contents
    signed_attrs: bytes | None  # contents of [0] signedAttrs
    attributes: dict[bytes, list[list[_Tlv]]]  # attrType OID contents to each attrValues
    signature_algorithm: bytes  # AlgorithmIdentifier DER
    signature: bytes


@dataclass(frozen=True)
class EFSod:
    """EF.SOD as read from or written to the chip; ``raw`` is the whole file, tag 77 included.

    Construction parses and checks the structure (``EncodingError`` when malformed); the signature
    and chain are only checked by :meth:`verify_signature`.
    """

    raw: bytes = field(repr=False)
    _parsed: _Parsed = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_parsed", _parse(self.raw))

    def __repr__(self) -> str:
        return f"EFSod({len(self.raw)} bytes, DGs {list(self._parsed.dg_hashes)})"

    @classmethod
    def from_bytes(cls, data: bytes) -> EFSod:
        return cls(bytes(data))

    def to_bytes(self) -> bytes:
        return self.raw

    @property
    def signed_data_der(self) -> bytes:
        """The ContentInfo inside the 77 wrapper: what ``openssl cms -verify -inform DER`` reads."""
        return self._parsed.signed_data_der

    @property
    def lds_security_object_der(self) -> bytes:
        """The eContent: the signed LDSSecurityObject, as ``openssl cms -verify`` outputs it."""
        return self._parsed.econtent

    @property
    def version(self) -> int:
        """LDSSecurityObject version: 0, or 1 when ldsVersionInfo is present."""
        return self._parsed.version

    @property
    def digest_algorithm(self) -> str:
        """Hash algorithm of the data group hashes (``"sha256"`` ...)."""
        return self._parsed.digest_algorithm

    @property
    def dg_hashes(self) -> dict[int, bytes]:
        """DG number to hash, in the order the signer wrote them (not necessarily sorted)."""
        return dict(self._parsed.dg_hashes)

    @property
    def signed_attributes(self) -> bytes | None:
        """DER of the signedAttrs as signed: the [0] tag replaced by SET (RFC 5652, 5.4)."""
        contents = self._parsed.signed_attrs
        return None if contents is None else _tlv(0x31, contents)

    @cached_property
    def ds_certificate(self) -> x509.Certificate:
        """The Document Signer certificate the SignerInfo names (Part 10, 4.6.2 requires it)."""
        certificate = _find_signer_certificate(self._parsed)
        if certificate is None:
            raise EncodingError(
                "EF.SOD carries no certificate for its signer", field="certificates"
            )
        try:
            # cryptography parses lazily; touch what verification uses so a damaged
            # certificate fails here, once, as malformed input.
            _public_key(certificate)
            certificate.extensions  # noqa: B018
        except _CERTIFICATE_ERRORS as exc:
            raise EncodingError("malformed DS certificate", field="certificates") from exc
        return certificate

    def check_hashes(self, files: Mapping[int, bytes]) -> list[str]:
        """Compare data group files (DG number to the exact bytes) with the signed hashes.

        Returns the reasons, empty when every DG in EF.SOD is given and matches and no other DG is
        given.  The bytes are hashed exactly as given: re-encoding a DG changes its hash.
        """
        hash_function = _HASHES[self._parsed.digest_algorithm]
        reasons: list[str] = []
        for number, expected in self._parsed.dg_hashes.items():
            data = files.get(number)
            if data is None:
                reasons.append(f"DG{number}: listed in EF.SOD but not present")
            elif not hmac.compare_digest(hash_function(data).digest(), expected):
                reasons.append(f"DG{number}: hash does not match EF.SOD")
        reasons.extend(
            f"DG{number}: present but not listed in EF.SOD"
            for number in sorted(files)
            if number not in self._parsed.dg_hashes
        )
        return reasons

    def verify_signature(
        self, trust_anchors: Sequence[x509.Certificate], *, at: datetime | None = None
    ) -> None:
        """Check the CMS signature and the DS certificate chain to one of ``trust_anchors``.

        Checks (RFC 5652 5.3-5.6, Part 11 passive authentication): SignedData v3; the SignerInfo
        digest algorithm is among the digestAlgorithms; contentType attribute = eContentType;
        messageDigest attribute = hash(eContent); the SignerInfo signature with the DS public key
        (ECDSA, RSASSA-PSS or RSA PKCS#1 v1.5); the DS certificate allows digitalSignature and is
        signed by a CSCA in ``trust_anchors`` whose name (and SKI, when the DS has an AKI)
        matches; both certificates are valid at ``at`` (default: now).  Raises
        ``VerificationError`` listing every failed check.
        """
        when = datetime.now(UTC) if at is None else _aware(at, "at")
        parsed = self._parsed
        reasons: list[str] = []
        if parsed.signed_data_version != 3:
            reasons.append("SignedData version is not 3")
        if parsed.signer_digest not in parsed.digest_algorithms:
            reasons.append("SignerInfo digest algorithm not listed in digestAlgorithms")
        reasons.extend(_check_signed_attributes(parsed))
        try:
            ds = self.ds_certificate
        except EncodingError:
            reasons.append("no usable DS certificate for the SignerInfo")
        else:
            signed_attributes = self.signed_attributes
            if signed_attributes is not None:
                reasons.extend(_check_signer_signature(ds, parsed, signed_attributes))
            reasons.extend(_check_chain(ds, trust_anchors, when))
        if reasons:
            raise VerificationError("EF.SOD failed passive authentication", reasons=tuple(reasons))


def build_sod(
    dg_files: Mapping[int, bytes],
    signer: DocumentSigner,
    *,
    digest: str = "sha256",
    signing_time: datetime | None = None,
    lds_version_info: tuple[str, str] | None = None,
) -> EFSod:
    """Hash the data group files exactly as given, and sign the hashes into an EF.SOD (DER).

    ``dg_files`` maps DG number (1-16) to the file's bytes as written to the chip, tag included;
    at least two DGs (Part 10, 4.6.2: SIZE (2..ub-DataGroups)).  ``lds_version_info`` is
    (ldsVersion "aabb", unicodeVersion "aabbcc") and makes the LDSSecurityObject v1.
    ``signing_time`` defaults to now.  The result is parsed back as a self-check (about 0.1 ms);
    :func:`build_sod_der` is the same file unparsed.
    """
    return EFSod(
        build_sod_der(
            dg_files,
            signer,
            digest=digest,
            signing_time=signing_time,
            lds_version_info=lds_version_info,
        )
    )


def build_sod_der(
    dg_files: Mapping[int, bytes],
    signer: DocumentSigner,
    *,
    digest: str = "sha256",
    signing_time: datetime | None = None,
    lds_version_info: tuple[str, str] | None = None,
) -> bytes:
    """:func:`build_sod` without the parse: the EF.SOD's bytes, tag 77 included.

    For a caller that checks the file anyway: the line reads every card back and verifies its
    EF.SOD (passive authentication), which catches what the self-check would.
    """
    if digest not in _BUILD_DIGESTS:
        raise ValueError(f"digest must be one of {_BUILD_DIGESTS}")
    if not 2 <= len(dg_files) <= _MAX_DG:
        raise ValueError("EF.SOD must list between 2 and 16 data groups")
    if any(not 1 <= number <= _MAX_DG for number in dg_files):
        raise ValueError("data group numbers run from 1 to 16")
    hash_function = _HASHES[digest]
    digest_algorithm = _DIGEST_ALGORITHM_DER[digest]

    # Part 10, 4.6.2.  DG numbers 1-16 are one-octet INTEGERs.
    hash_values = _tlv(
        0x30,
        b"".join(
            _tlv(0x30, b"\x02\x01" + bytes([number]) + _tlv(0x04, hash_function(data).digest()))
            for number, data in sorted(dg_files.items())
        ),
    )
    if lds_version_info is None:
        econtent = _tlv(0x30, b"\x02\x01\x00" + digest_algorithm + hash_values)
    else:
        lds_version, unicode_version = lds_version_info
        if not (_is_digits(lds_version, 4) and _is_digits(unicode_version, 6)):
            raise ValueError("lds_version_info is ('aabb', 'aabbcc'), e.g. ('0108', '040000')")
        version_info = _tlv(
            0x30,
            _tlv(0x13, lds_version.encode("ascii")) + _tlv(0x13, unicode_version.encode("ascii")),
        )
        econtent = _tlv(0x30, b"\x02\x01\x01" + digest_algorithm + hash_values + version_info)

    when = datetime.now(UTC) if signing_time is None else _aware(signing_time, "signing_time")
    time_der = _time_der(when)
    # Part 10, 4.6.2: contentType and messageDigest are required, signingTime optional.
    # DER orders a SET OF by the encodings (X.690 11.6); the SET is what is signed (RFC 5652 5.4).
    signed_attrs = b"".join(
        sorted(
            (
                _CONTENT_TYPE_ATTRIBUTE,
                _tlv(0x30, _tlv(_OID, _OID_SIGNING_TIME) + _tlv(0x31, time_der)),
                _tlv(
                    0x30,
                    _tlv(_OID, _OID_MESSAGE_DIGEST)
                    + _tlv(0x31, _tlv(0x04, hash_function(econtent).digest())),
                ),
            )
        )
    )
    parts = _signer_parts(signer.certificate, signer.signature_algorithm)
    signature = signer.sign(_tlv(0x31, signed_attrs))
    signer_info = _tlv(
        0x30,
        b"\x02\x01\x01"  # v1: sid is issuerAndSerialNumber (RFC 5652 5.3)
        + parts.sid
        + digest_algorithm
        + _tlv(0xA0, signed_attrs)
        + parts.signature_algorithm
        + _tlv(0x04, signature),
    )
    signed_data = _tlv(
        0x30,
        b"\x02\x01\x03"  # v3: Part 10 4.6.2; RFC 5652 5.1 (eContentType is not id-data)
        + _tlv(0x31, digest_algorithm)
        + _tlv(0x30, _tlv(_OID, _OID_LDS_SO) + _tlv(0xA0, _tlv(0x04, econtent)))
        + parts.certificates
        + _tlv(0x31, signer_info),
    )
    content_info = _tlv(0x30, _tlv(_OID, _OID_SIGNED_DATA) + _tlv(0xA0, signed_data))
    return _tlv(0x77, content_info)


def _time_der(when: datetime) -> bytes:
    """RFC 5652 11.3 Time, to the second: UTCTime for 1950-2049, GeneralizedTime otherwise.

    A signing time is now, so the UTCTime is written directly (X.690 11.8 DER: YYMMDDHHMMSSZ),
    the bytes asn1crypto's ``cms.Time`` writes (the tests compare) without building its object;
    other years go through asn1crypto.
    """
    if 1950 <= when.year <= 2049:
        return _tlv(0x17, when.strftime("%y%m%d%H%M%SZ").encode("ascii"))
    time_der: bytes = cms.Time(name="generalized_time", value=when.replace(microsecond=0)).dump()
    return time_der


@dataclass(frozen=True, slots=True)
class _SignerParts:
    certificates: bytes  # [0] IMPLICIT CertificateSet holding the DS certificate
    sid: bytes  # IssuerAndSerialNumber
    signature_algorithm: bytes


@lru_cache(maxsize=16)
def _signer_parts(certificate: x509.Certificate, signature_algorithm: bytes) -> _SignerParts:
    """The signer's fixed DER: a batch signs thousands of SODs with one DS, encoded once."""
    certificate_der = certificate.public_bytes(Encoding.DER)
    tbs = asn1_x509.Certificate.load(certificate_der)["tbs_certificate"]
    sid = cms.IssuerAndSerialNumber(
        {"issuer": tbs["issuer"], "serial_number": tbs["serial_number"]}
    )
    algorithm = algos.SignedDigestAlgorithm.load(signature_algorithm, strict=True)
    return _SignerParts(
        certificates=_tlv(0xA0, certificate_der),
        sid=sid.dump(),
        signature_algorithm=algorithm.dump(force=True),
    )


def _parse(raw: bytes) -> _Parsed:
    try:
        return _parse_structure(raw)
    except EncodingError:
        raise
    except (ValueError, TypeError, IndexError, OverflowError) as exc:
        raise EncodingError("malformed EF.SOD", field="EF.SOD") from exc


def _parse_structure(raw: bytes) -> _Parsed:
    outer = _one(raw, "EF.SOD")
    if not outer.is_(_APPLICATION, 23):
        raise EncodingError("EF.SOD does not start with tag 77", field="EF.SOD")
    content_type, content = _seq(_one(outer.contents, "ContentInfo"), "ContentInfo", 2)
    if _oid(content_type, "contentType") != _OID_SIGNED_DATA or not content.is_(_CONTEXT, 0):
        raise EncodingError("EF.SOD content is not SignedData", field="contentType")
    signed_data = _seq(_one(content.contents, "SignedData"), "SignedData")
    if len(signed_data) < 4:
        raise EncodingError("SignedData is truncated", field="SignedData")
    version, digest_set, encap, *rest = signed_data
    signer_set = rest.pop()
    certificates: tuple[bytes, ...] = ()
    for item in rest:  # [0] IMPLICIT certificates, [1] IMPLICIT crls
        if item.is_(_CONTEXT, 0):
            # Only the plain Certificate choice (a SEQUENCE) can name the signer.
            certificates = tuple(
                c.encoding for c in _items(item.contents) if c.is_(_UNIVERSAL, _SEQUENCE)
            )
        elif not item.is_(_CONTEXT, 1):
            raise EncodingError("unexpected field in SignedData", field="SignedData")
    if not digest_set.is_(_UNIVERSAL, _SET) or not signer_set.is_(_UNIVERSAL, _SET):
        raise EncodingError("SignedData fields out of order", field="SignedData")
    digest_algorithms = frozenset(_algorithm_oid(item) for item in _items(digest_set.contents))

    encap_items = _seq(encap, "encapContentInfo")
    econtent_type = _oid(encap_items[0], "eContentType")
    if econtent_type not in (_OID_LDS_SO, _OID_LDS_SO_LEGACY):
        raise EncodingError("eContentType is not ldsSecurityObject", field="eContentType")
    if len(encap_items) != 2 or not encap_items[1].is_(_CONTEXT, 0):
        raise EncodingError("EF.SOD has no eContent", field="eContent")
    econtent = _octets(_one(encap_items[1].contents, "eContent"), "eContent")

    signers = _items(signer_set.contents)
    # Part 10, 4.6.2 recommends a single SignerInfo; a perso line writes exactly one.
    if len(signers) != 1:
        raise EncodingError("EF.SOD must carry exactly one SignerInfo", field="signerInfos")
    signer = _seq(signers[0], "SignerInfo")
    signed_attrs: bytes | None = None
    attributes: dict[bytes, list[list[_Tlv]]] = {}
    if len(signer) > 3 and signer[3].is_(_CONTEXT, 0):
        signed_attrs = signer.pop(3).contents
        for attribute in _items(signed_attrs):
            oid, value_set = _seq(attribute, "Attribute", 2)
            if not value_set.is_(_UNIVERSAL, _SET):
                raise EncodingError("attrValues is not a SET", field="signedAttrs")
            attributes.setdefault(_oid(oid, "attrType"), []).append(_items(value_set.contents))
    if len(signer) not in (5, 6) or (len(signer) == 6 and not signer[5].is_(_CONTEXT, 1)):
        raise EncodingError("SignerInfo has wrong fields", field="SignerInfo")
    _algorithm_oid(signer[3])
    signature = signer[4]
    if not signature.is_(_UNIVERSAL, _OCTET_STRING) or signature.constructed:
        raise EncodingError("SignerInfo signature is not an OCTET STRING", field="signature")
    version_number, digest_algorithm, dg_hashes = _parse_lds_security_object(econtent)
    return _Parsed(
        signed_data_der=outer.contents,
        signed_data_version=_integer(version, "version"),
        digest_algorithms=digest_algorithms,
        econtent_type=econtent_type,
        econtent=econtent,
        version=version_number,
        digest_algorithm=digest_algorithm,
        dg_hashes=dg_hashes,
        certificates=certificates,
        sid=signer[1],
        signer_digest=_algorithm_oid(signer[2]),
        signed_attrs=signed_attrs,
        attributes=attributes,
        signature_algorithm=signer[3].encoding,
        signature=signature.contents,
    )


def _parse_lds_security_object(econtent: bytes) -> tuple[int, str, dict[int, bytes]]:
    fields = _seq(_one(econtent, "LDSSecurityObject"), "LDSSecurityObject")
    if len(fields) not in (3, 4):
        raise EncodingError("LDSSecurityObject has wrong fields", field="LDSSecurityObject")
    version = _integer(fields[0], "version")
    if version != (1 if len(fields) == 4 else 0):
        raise EncodingError(
            "LDSSecurityObject version does not match ldsVersionInfo", field="version"
        )
    digest_algorithm = _DIGEST_NAMES.get(_algorithm_oid(fields[1]))
    if digest_algorithm is None:
        raise EncodingError("unsupported data group hash algorithm", field="hashAlgorithm")
    size = _HASHES[digest_algorithm](b"").digest_size
    dg_hashes: dict[int, bytes] = {}
    for item in _seq(fields[2], "dataGroupHashValues"):
        number_tlv, value_tlv = _seq(item, "DataGroupHash", 2)
        number = _integer(number_tlv, "dataGroupNumber")
        value = _octets(value_tlv, "dataGroupHashValue")
        if not 1 <= number <= _MAX_DG or number in dg_hashes or len(value) != size:
            raise EncodingError("malformed DataGroupHash", field="dataGroupHashValues")
        dg_hashes[number] = value
    if not dg_hashes:
        raise EncodingError("LDSSecurityObject lists no data group", field="dataGroupHashValues")
    return version, digest_algorithm, dg_hashes


def _check_signed_attributes(parsed: _Parsed) -> list[str]:
    if parsed.signed_attrs is None:
        return ["SignerInfo has no signedAttrs"]  # Part 10, 4.6.2: required
    values = parsed.attributes
    reasons: list[str] = []
    # RFC 5652 5.3: exactly one contentType and one messageDigest, each with a single value.
    content_type = values.get(_OID_CONTENT_TYPE, [])
    if len(content_type) != 1 or len(content_type[0]) != 1:
        reasons.append("contentType attribute missing or repeated")
    elif content_type[0][0].encoding != _tlv(_OID, parsed.econtent_type):
        reasons.append("contentType attribute does not match eContentType")
    message_digest = values.get(_OID_MESSAGE_DIGEST, [])
    digest_name = _DIGEST_NAMES.get(parsed.signer_digest)
    if len(message_digest) != 1 or len(message_digest[0]) != 1:
        reasons.append("messageDigest attribute missing or repeated")
    elif digest_name is None:
        reasons.append("unsupported SignerInfo digest algorithm")
    elif not hmac.compare_digest(
        message_digest[0][0].encoding, _tlv(0x04, _HASHES[digest_name](parsed.econtent).digest())
    ):
        reasons.append("messageDigest does not match the eContent")
    return reasons


def _check_signer_signature(
    ds: x509.Certificate, parsed: _Parsed, signed_attrs: bytes
) -> list[str]:
    try:
        kind, hash_name, mgf_hash, salt = _signature_scheme(
            parsed.signature_algorithm, parsed.signer_digest
        )
    except (ValueError, KeyError, TypeError):
        return ["unsupported or malformed SignerInfo signature algorithm"]
    key = _public_key(ds)
    hash_algorithm = _CRYPTO_HASHES[hash_name]()
    try:
        if kind == "rsassa_pss" and isinstance(key, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(_CRYPTO_HASHES[mgf_hash]()), salt_length=salt)
            key.verify(parsed.signature, signed_attrs, pss, hash_algorithm)
        elif kind == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
            key.verify(parsed.signature, signed_attrs, padding.PKCS1v15(), hash_algorithm)
        elif kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(parsed.signature, signed_attrs, ec.ECDSA(hash_algorithm))
        else:
            return ["signature algorithm does not fit the DS key"]
    except InvalidSignature:
        return ["SignerInfo signature does not verify with the DS certificate"]
    return []


@lru_cache(maxsize=32)
def _signature_scheme(algorithm_der: bytes, signer_digest: bytes) -> tuple[str, str, str, int]:
    """(kind, hash, MGF1 hash, salt length) of a SignerInfo signatureAlgorithm; a DS batch repeats
    the same few, so they are interpreted once."""
    algorithm = algos.SignedDigestAlgorithm.load(algorithm_der, strict=True)
    kind: str = algorithm.signature_algo
    if kind == "rsassa_pss":
        # RFC 4055 3.1
        params = algorithm["parameters"]
        mgf = params["mask_gen_algorithm"]
        if mgf["algorithm"].native != "mgf1":
            raise ValueError("unsupported mask generation function")
        hash_name: str = params["hash_algorithm"]["algorithm"].native
        mgf_hash: str = mgf["parameters"]["algorithm"].native
        salt: int = params["salt_length"].native
    else:
        try:
            hash_name = algorithm.hash_algo
        except ValueError:
            # rsaEncryption as signatureAlgorithm (RFC 3370 3.2, common on older SODs): the hash
            # is the SignerInfo digestAlgorithm.
            hash_name = _DIGEST_NAMES[signer_digest]
        mgf_hash, salt = hash_name, 0
    if hash_name not in _CRYPTO_HASHES or mgf_hash not in _CRYPTO_HASHES:
        raise ValueError("unsupported hash")
    return kind, hash_name, mgf_hash, salt


def _check_chain(
    ds: x509.Certificate, trust_anchors: Sequence[x509.Certificate], when: datetime
) -> list[str]:
    reasons: list[str] = []
    try:
        if not ds.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            reasons.append("DS certificate key usage lacks digitalSignature")
    except x509.ExtensionNotFound:
        pass
    if not _valid_at(ds, when):
        reasons.append("DS certificate not valid at the verification time")
    issuer = _find_issuer(ds, trust_anchors)
    if issuer is None:
        reasons.append("DS certificate not signed by any trusted CSCA")
    elif not _valid_at(issuer, when):
        reasons.append("CSCA certificate not valid at the verification time")
    return reasons


def _find_issuer(
    ds: x509.Certificate, trust_anchors: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    try:
        wanted = ds.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        key_id = wanted.key_identifier
    except x509.ExtensionNotFound:
        key_id = None
    for csca in trust_anchors:
        if csca.subject != ds.issuer:
            continue
        if key_id is not None:
            try:
                ski = csca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            except x509.ExtensionNotFound:
                ski = None
            # Part 12, 7.1.1: CSCA keys roll over under one name; the AKI says which key signed.
            if ski is not None and ski.digest != key_id:
                continue
        if _issued_by(ds, csca):
            return csca
    return None


@lru_cache(maxsize=16)
def _load_certificate(der: bytes) -> x509.Certificate:
    """A batch's SODs all carry the same DS certificate: parsed once (the object is immutable)."""
    return x509.load_der_x509_certificate(der)


@lru_cache(maxsize=16)
def _public_key(certificate: x509.Certificate) -> Any:
    return certificate.public_key()


@lru_cache(maxsize=64)
def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``certificate``.  Certificates hash and compare by their
    DER, and a signature check is a function of the two DERs alone, so the answer for a batch's
    one DS certificate is computed once; validity periods are checked on every use."""
    try:
        certificate.verify_directly_issued_by(issuer)
    except (InvalidSignature, TypeError, *_CERTIFICATE_ERRORS):
        return False
    return True


def _find_signer_certificate(parsed: _Parsed) -> x509.Certificate | None:
    sid = parsed.sid
    wanted: tuple[int, bytes] | None = None
    if sid.is_(_UNIVERSAL, _SEQUENCE):  # issuerAndSerialNumber
        issuer, serial = _seq(sid, "IssuerAndSerialNumber", 2)
        wanted = (_integer(serial, "serialNumber"), issuer.encoding)
    elif not sid.is_(_CONTEXT, 0):  # nor subjectKeyIdentifier
        raise EncodingError("malformed SignerIdentifier", field="sid")
    for der in parsed.certificates:
        try:
            certificate = _load_certificate(der)
            if wanted is not None:
                found = (certificate.serial_number, certificate.issuer.public_bytes()) == wanted
            else:
                ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
                found = ski.value.digest == sid.contents
        except (*_CERTIFICATE_ERRORS, x509.ExtensionNotFound):
            continue
        if found:
            return certificate
    return None


def _items(data: bytes) -> list[_Tlv]:
    """Split concatenated BER values.

    Low tag numbers with definite lengths, all an SOD envelope holds, are read inline (a call into
    asn1crypto's parser per value was half the cost of a parse); anything else, such as the
    indefinite lengths some issuers' SODs carry, goes to asn1crypto's parser.
    """
    items: list[_Tlv] = []
    position = 0
    end = len(data)
    while position < end:
        identifier = data[position]
        length = data[position + 1] if position + 1 < end else 0x80
        if identifier & 0x1F != 0x1F and length != 0x80 and length <= 0x84:
            start = position + 2
            if length > 0x80:
                start += length - 0x80
                length = int.from_bytes(data[position + 2 : start], "big")
            stop = start + length
            if stop > end:
                raise EncodingError("TLV runs past the end of its container", field="EF.SOD")
            items.append(
                _Tlv(
                    identifier >> 6,
                    bool(identifier & 0x20),
                    identifier & 0x1F,
                    data[start:stop],
                    data[position:stop],
                )
            )
            position = stop
            continue
        rest = data[position:]
        try:
            class_, method, tag, header, contents, trailer = parser.parse(rest)
        except ValueError as exc:
            raise EncodingError("malformed BER", field="EF.SOD") from exc
        size = len(header) + len(contents) + len(trailer)
        items.append(_Tlv(class_, method == _CONSTRUCTED, tag, contents, rest[:size]))
        position += size
    return items


def _one(data: bytes, what: str) -> _Tlv:
    items = _items(data)
    if len(items) != 1:
        raise EncodingError(f"{what} is not a single TLV", field=what)
    return items[0]


def _seq(tlv: _Tlv, what: str, count: int | None = None) -> list[_Tlv]:
    if not tlv.is_(_UNIVERSAL, _SEQUENCE) or not tlv.constructed:
        raise EncodingError(f"{what} is not a SEQUENCE", field=what)
    items = _items(tlv.contents)
    if count is not None and len(items) != count:
        raise EncodingError(f"{what} has {len(items)} fields, expected {count}", field=what)
    return items


def _integer(tlv: _Tlv, what: str) -> int:
    if not tlv.is_(_UNIVERSAL, _INTEGER) or tlv.constructed or not tlv.contents:
        raise EncodingError(f"{what} is not an INTEGER", field=what)
    return int.from_bytes(tlv.contents, "big", signed=True)


def _oid(tlv: _Tlv, what: str) -> bytes:
    if not tlv.is_(_UNIVERSAL, _OID) or tlv.constructed:
        raise EncodingError(f"{what} is not an OBJECT IDENTIFIER", field=what)
    return tlv.contents


def _octets(tlv: _Tlv, what: str) -> bytes:
    if not tlv.is_(_UNIVERSAL, _OCTET_STRING):
        raise EncodingError(f"{what} is not an OCTET STRING", field=what)
    if tlv.constructed:  # BER segments (X.690 8.7.3), as indefinite-length SODs carry
        return b"".join(_octets(item, what) for item in _items(tlv.contents))
    return tlv.contents


def _algorithm_oid(tlv: _Tlv) -> bytes:
    items = _seq(tlv, "AlgorithmIdentifier")
    if not 1 <= len(items) <= 2:
        raise EncodingError("malformed AlgorithmIdentifier", field="AlgorithmIdentifier")
    return _oid(items[0], "AlgorithmIdentifier")


def _tlv(tag: int, value: bytes) -> bytes:
    length = len(value)
    if length < 0x80:
        return bytes((tag, length)) + value
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(octets))) + octets + value


def _valid_at(certificate: x509.Certificate, when: datetime) -> bool:
    return certificate.not_valid_before_utc <= when <= certificate.not_valid_after_utc


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _is_digits(text: str, length: int) -> bool:
    return len(text) == length and text.isascii() and text.isdigit()
