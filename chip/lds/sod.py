"""EF.SOD, the Document Security Object: the data group hashes, signed by the Document Signer.

ICAO Doc 9303 Part 10 (8th ed., 2021), 4.6.2: EF.SOD is ``77 L ContentInfo``, a CMS SignedData
(RFC 5652) whose encapsulated content is the DER of an LDSSecurityObject::

    LDSSecurityObject ::= SEQUENCE {
        version             LDSSecurityObjectVersion,         -- v0, or v1 with ldsVersionInfo
        hashAlgorithm       DigestAlgorithmIdentifier,
        dataGroupHashValues SEQUENCE SIZE (2..ub-DataGroups) OF DataGroupHash,
        ldsVersionInfo      LDSVersionInfo OPTIONAL }
    DataGroupHash ::= SEQUENCE { dataGroupNumber INTEGER, dataGroupHashValue OCTET STRING }

Passive authentication (Part 11, 5.1) is :meth:`EFSod.verify_signature` (signature and chain) plus
:meth:`EFSod.check_hashes` (the files read back against the signed hashes).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from asn1crypto import algos, cms, core, parser
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from chip.errors import EncodingError, VerificationError
from chip.pki import DocumentSigner

__all__ = ["OID_LDS_SECURITY_OBJECT", "EFSod", "build_sod"]

#: Part 10, 4.6.2.1: id-icao-mrtd-security-ldsSecurityObject.
OID_LDS_SECURITY_OBJECT = "2.23.136.1.1.1"
# Belgian and French documents carry this pre-standard OID; JMRTD and pymrtd accept it on read.
_LEGACY_LDS_SECURITY_OBJECT = "1.3.27.1.1.1"

_EF_SOD_TAG = 0x77  # [APPLICATION 23], Part 10 table 35
_MAX_DG = 16  # ub-DataGroups, Part 10 4.6.2.3

_HASHES: dict[str, Callable[[bytes], Any]] = {
    "sha1": hashlib.sha1,  # read only: legacy documents
    "sha224": hashlib.sha224,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
_BUILD_DIGESTS = ("sha224", "sha256", "sha384", "sha512")  # Part 12, 4.1: SHA-2 family
_CRYPTO_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class _DataGroupHash(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012 - asn1crypto's schema hook
        ("dataGroupNumber", core.Integer),
        ("dataGroupHashValue", core.OctetString),
    ]


class _DataGroupHashValues(core.SequenceOf):  # type: ignore[misc]
    _child_spec = _DataGroupHash


class _LDSVersionInfo(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("ldsVersion", core.PrintableString),
        ("unicodeVersion", core.PrintableString),
    ]


class _LDSSecurityObject(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("version", core.Integer),
        ("hashAlgorithm", algos.DigestAlgorithm),
        ("dataGroupHashValues", _DataGroupHashValues),
        ("ldsVersionInfo", _LDSVersionInfo, {"optional": True}),
    ]


@dataclass(frozen=True, slots=True)
class _Parsed:
    signed_data_der: bytes
    signed_data: Any  # asn1crypto cms.SignedData
    signer: Any  # asn1crypto cms.SignerInfo
    econtent_type: str
    econtent: bytes
    version: int
    digest_algorithm: str
    dg_hashes: dict[int, bytes]


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
    def version(self) -> int:
        """LDSSecurityObject version: 0, or 1 when ldsVersionInfo is present."""
        return self._parsed.version

    @property
    def digest_algorithm(self) -> str:
        """Hash algorithm of the data group hashes (``"sha256"`` ...)."""
        return self._parsed.digest_algorithm

    @property
    def dg_hashes(self) -> dict[int, bytes]:
        """Data group number to hash, in the order the signer wrote them (not necessarily sorted)."""
        return dict(self._parsed.dg_hashes)

    @property
    def signed_attributes(self) -> bytes:
        """DER of the signedAttrs as signed: the [0] tag replaced by SET (RFC 5652, 5.4)."""
        contents: bytes = self._parsed.signer["signed_attrs"].contents or b""
        return b"\x31" + _der_length(len(contents)) + contents

    @cached_property
    def ds_certificate(self) -> x509.Certificate:
        """The Document Signer certificate the SignerInfo names (Part 10, 4.6.2.2 requires it)."""
        certificate = _find_signer_certificate(self._parsed.signed_data, self._parsed.signer)
        if certificate is None:
            raise EncodingError("EF.SOD carries no certificate for its signer", field="certificates")
        try:
            return x509.load_der_x509_certificate(certificate.dump())
        except ValueError as exc:
            raise EncodingError("malformed DS certificate", field="certificates") from exc

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

        Checks (RFC 5652 5.4-5.6, Part 11 5.1.1): SignedData v3; the SignerInfo digest algorithm
        is among the digestAlgorithms; contentType attribute = eContentType; messageDigest
        attribute = hash(eContent); the SignerInfo signature with the DS public key (ECDSA,
        RSASSA-PSS or RSA PKCS#1 v1.5); the DS certificate allows digitalSignature, is signed by a
        CSCA in ``trust_anchors`` whose name (and SKI, when the DS has an AKI) matches; both
        certificates are valid at ``at`` (default: now).  Raises ``VerificationError`` listing
        every failed check.
        """
        when = datetime.now(UTC) if at is None else _aware(at, "at")
        parsed = self._parsed
        signer = parsed.signer
        reasons: list[str] = []
        if parsed.signed_data["version"].native != "v3":
            reasons.append("SignedData version is not 3")
        digest_name = signer["digest_algorithm"]["algorithm"].native
        if digest_name not in {
            algorithm["algorithm"].native for algorithm in parsed.signed_data["digest_algorithms"]
        }:
            reasons.append("SignerInfo digest algorithm not listed in digestAlgorithms")
        reasons.extend(_check_signed_attributes(signer, parsed, digest_name))
        try:
            ds = self.ds_certificate
        except EncodingError:
            reasons.append("no DS certificate for the SignerInfo")
        else:
            if not reasons:
                reasons.extend(_check_signer_signature(ds, signer, self.signed_attributes))
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
    """Hash the data group files exactly as given, and sign the hashes into an EF.SOD.

    ``dg_files`` maps DG number (1-16) to the file's bytes as written to the chip, tag included;
    at least two DGs (Part 10, 4.6.2.3: SIZE (2..ub-DataGroups)).  ``lds_version_info`` is
    (ldsVersion "aabb", unicodeVersion "aabbcc") and makes the LDSSecurityObject v1.
    ``signing_time`` defaults to now.
    """
    if digest not in _BUILD_DIGESTS:
        raise ValueError(f"digest must be one of {_BUILD_DIGESTS}")
    if not 2 <= len(dg_files) <= _MAX_DG:
        raise ValueError("EF.SOD must list between 2 and 16 data groups")
    if any(not 1 <= number <= _MAX_DG for number in dg_files):
        raise ValueError("data group numbers run from 1 to 16")
    hash_function = _HASHES[digest]
    lds_so: dict[str, Any] = {
        "version": 0,
        "hashAlgorithm": {"algorithm": digest},
        "dataGroupHashValues": [
            {"dataGroupNumber": number, "dataGroupHashValue": hash_function(data).digest()}
            for number, data in sorted(dg_files.items())
        ],
    }
    if lds_version_info is not None:
        lds_version, unicode_version = lds_version_info
        if not (_is_digits(lds_version, 4) and _is_digits(unicode_version, 6)):
            raise ValueError("lds_version_info is ('aabb', 'aabbcc'), e.g. ('0108', '040000')")
        lds_so["version"] = 1
        lds_so["ldsVersionInfo"] = {"ldsVersion": lds_version, "unicodeVersion": unicode_version}
    econtent: bytes = _LDSSecurityObject(lds_so).dump()

    when = (datetime.now(UTC) if signing_time is None else _aware(signing_time, "signing_time"))
    when = when.replace(microsecond=0)
    # RFC 5652 11.3: UTCTime for 1950-2049, GeneralizedTime otherwise.
    time_choice = "utc_time" if 1950 <= when.year <= 2049 else "general_time"
    # Part 10, 4.6.2.2: contentType and messageDigest are required; signingTime is optional.
    # SetOf sorts the encodings, giving the DER that is signed (RFC 5652 5.4).
    signed_attrs = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": [OID_LDS_SECURITY_OBJECT]}),
            cms.CMSAttribute({"type": "signing_time", "values": [cms.Time(name=time_choice, value=when)]}),
            cms.CMSAttribute({"type": "message_digest", "values": [hash_function(econtent).digest()]}),
        ]
    )
    signature = signer.sign(signed_attrs.dump())

    certificate = asn1_x509.Certificate.load(_certificate_der(signer.certificate))
    tbs = certificate["tbs_certificate"]
    digest_algorithm = {"algorithm": digest}  # RFC 5754 2: parameters absent
    signed_data = cms.SignedData(
        {
            # Part 10, 4.6.2.2: version 3; one SignerInfo, sid = issuerAndSerialNumber (v1).
            "version": "v3",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": {"content_type": OID_LDS_SECURITY_OBJECT, "content": econtent},
            "certificates": [certificate],
            "signer_infos": [
                {
                    "version": "v1",
                    "sid": cms.SignerIdentifier(
                        name="issuer_and_serial_number",
                        value={"issuer": tbs["issuer"], "serial_number": tbs["serial_number"]},
                    ),
                    "digest_algorithm": digest_algorithm,
                    "signed_attrs": signed_attrs,
                    "signature_algorithm": algos.SignedDigestAlgorithm.load(
                        signer.signature_algorithm
                    ),
                    "signature": signature,
                }
            ],
        }
    )
    content_info: bytes = cms.ContentInfo(
        {"content_type": "signed_data", "content": signed_data}
    ).dump()
    return EFSod(bytes([_EF_SOD_TAG]) + _der_length(len(content_info)) + content_info)


def _parse(raw: bytes) -> _Parsed:
    try:
        class_, method, tag, _header, inner, _trailer = parser.parse(raw, strict=True)
    except ValueError as exc:
        raise EncodingError("EF.SOD is not a single BER TLV", field="EF.SOD") from exc
    if (class_, method, tag) != (1, 1, 23):
        raise EncodingError("EF.SOD does not start with tag 77", field="EF.SOD")
    try:
        content_info = cms.ContentInfo.load(inner, strict=True)
        if content_info["content_type"].native != "signed_data":
            raise EncodingError("EF.SOD content is not SignedData", field="contentType")
        signed_data = content_info["content"]
        encap = signed_data["encap_content_info"]
        econtent_type = encap["content_type"].dotted
        if econtent_type not in (OID_LDS_SECURITY_OBJECT, _LEGACY_LDS_SECURITY_OBJECT):
            raise EncodingError("eContentType is not ldsSecurityObject", field="eContentType")
        if encap["content"].native is None:
            raise EncodingError("EF.SOD has no eContent", field="eContent")
        econtent = bytes(encap["content"].native)
        signer_infos = signed_data["signer_infos"]
        # Part 10, 4.6.2.2 recommends one SignerInfo; a perso line writes exactly one.
        if len(signer_infos) != 1:
            raise EncodingError("EF.SOD must carry exactly one SignerInfo", field="signerInfos")
        signer = signer_infos[0]
        signer.native  # noqa: B018 - forces the lazy parse so that malformed bytes fail here
        lds_so = _LDSSecurityObject.load(econtent, strict=True)
        version = lds_so["version"].native
        digest_algorithm = lds_so["hashAlgorithm"]["algorithm"].native
        hash_values = lds_so["dataGroupHashValues"]
        dg_hashes: dict[int, bytes] = {}
        for item in hash_values:
            number = item["dataGroupNumber"].native
            dg_hashes[number] = item["dataGroupHashValue"].native
        has_version_info = lds_so["ldsVersionInfo"].native is not None
    except EncodingError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise EncodingError("malformed EF.SOD", field="EF.SOD") from exc
    if digest_algorithm not in _HASHES:
        raise EncodingError("unsupported data group hash algorithm", field="hashAlgorithm")
    if version != (1 if has_version_info else 0):
        raise EncodingError("LDSSecurityObject version does not match ldsVersionInfo", field="version")
    size = _HASHES[digest_algorithm](b"").digest_size
    if (
        len(dg_hashes) != len(hash_values)
        or not all(1 <= number <= _MAX_DG for number in dg_hashes)
        or not all(len(value) == size for value in dg_hashes.values())
    ):
        raise EncodingError("malformed dataGroupHashValues", field="dataGroupHashValues")
    return _Parsed(
        signed_data_der=inner,
        signed_data=signed_data,
        signer=signer,
        econtent_type=econtent_type,
        econtent=econtent,
        version=version,
        digest_algorithm=digest_algorithm,
        dg_hashes=dg_hashes,
    )


def _check_signed_attributes(signer: Any, parsed: _Parsed, digest_name: str) -> list[str]:
    attrs = signer["signed_attrs"]
    if not attrs:
        return ["SignerInfo has no signedAttrs"]
    values: dict[str, list[Any]] = {}
    for attr in attrs:
        values.setdefault(attr["type"].dotted, []).append(attr["values"])
    reasons: list[str] = []
    content_type = values.get("1.2.840.113549.1.9.3", [])
    # RFC 5652 5.3: exactly one contentType attribute with one value, equal to eContentType.
    if len(content_type) != 1 or len(content_type[0]) != 1:
        reasons.append("contentType attribute missing or repeated")
    elif content_type[0][0].dotted != parsed.econtent_type:
        reasons.append("contentType attribute does not match eContentType")
    message_digest = values.get("1.2.840.113549.1.9.4", [])
    hash_function = _HASHES.get(digest_name)
    if len(message_digest) != 1 or len(message_digest[0]) != 1:
        reasons.append("messageDigest attribute missing or repeated")
    elif hash_function is None:
        reasons.append("unsupported SignerInfo digest algorithm")
    elif not hmac.compare_digest(
        message_digest[0][0].native, hash_function(parsed.econtent).digest()
    ):
        reasons.append("messageDigest does not match the eContent")
    return reasons


def _check_signer_signature(ds: x509.Certificate, signer: Any, signed_attrs: bytes) -> list[str]:
    key = ds.public_key()
    algorithm = signer["signature_algorithm"]
    signature: bytes = signer["signature"].native
    try:
        kind = algorithm.signature_algo
        if kind == "rsassa_pss":
            params = algorithm["parameters"]
            mgf = params["mask_gen_algorithm"]
            if mgf["algorithm"].native != "mgf1":
                return ["unsupported RSASSA-PSS mask generation function"]
            hash_algorithm = _crypto_hash(params["hash_algorithm"]["algorithm"].native)
            pss = padding.PSS(
                mgf=padding.MGF1(_crypto_hash(mgf["parameters"]["algorithm"].native)),
                salt_length=params["salt_length"].native,
            )
            if not isinstance(key, rsa.RSAPublicKey):
                return ["signature algorithm does not fit the DS key"]
            key.verify(signature, signed_attrs, pss, hash_algorithm)
            return []
        hash_algorithm = _crypto_hash(_signature_hash(algorithm, signer))
        if kind == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signed_attrs, padding.PKCS1v15(), hash_algorithm)
        elif kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, signed_attrs, ec.ECDSA(hash_algorithm))
        else:
            return ["signature algorithm does not fit the DS key"]
    except InvalidSignature:
        return ["SignerInfo signature does not verify with the DS certificate"]
    except (ValueError, KeyError, TypeError):
        return ["unsupported or malformed SignerInfo signature algorithm"]
    return []


def _signature_hash(algorithm: Any, signer: Any) -> str:
    try:
        name: str = algorithm.hash_algo
    except ValueError:
        # rsaEncryption or id-ecPublicKey as signatureAlgorithm (RFC 3370 3.2, seen on older
        # SODs): the hash is the SignerInfo digestAlgorithm.
        name = signer["digest_algorithm"]["algorithm"].native
    return name


def _check_chain(
    ds: x509.Certificate, trust_anchors: Sequence[x509.Certificate], when: datetime
) -> list[str]:
    reasons: list[str] = []
    try:
        usage = ds.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
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
        aki = ds.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        wanted: bytes | None = aki.key_identifier
    except x509.ExtensionNotFound:
        wanted = None
    for csca in trust_anchors:
        if csca.subject != ds.issuer:
            continue
        if wanted is not None:
            try:
                ski = csca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            except x509.ExtensionNotFound:
                ski = None
            # Part 12, 7.1.1: several CSCA keys may share a name (key rollover); the AKI picks one.
            if ski is not None and ski.digest != wanted:
                continue
        try:
            ds.verify_directly_issued_by(csca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return csca
    return None


def _find_signer_certificate(signed_data: Any, signer: Any) -> Any:
    sid = signer["sid"]
    for choice in signed_data["certificates"] or ():
        if choice.name != "certificate":
            continue
        candidate = choice.chosen
        if sid.name == "issuer_and_serial_number":
            wanted = sid.chosen
            if (
                candidate.serial_number == wanted["serial_number"].native
                and candidate.issuer == wanted["issuer"]
            ):
                return candidate
        elif candidate.key_identifier == sid.chosen.native:
            return candidate
    return None


def _valid_at(certificate: x509.Certificate, when: datetime) -> bool:
    return certificate.not_valid_before_utc <= when <= certificate.not_valid_after_utc


def _crypto_hash(name: str) -> hashes.HashAlgorithm:
    try:
        return _CRYPTO_HASHES[name]()
    except KeyError:
        raise ValueError(f"unsupported hash {name}") from None


_CERTIFICATE_DER: dict[x509.Certificate, bytes] = {}


def _certificate_der(certificate: x509.Certificate) -> bytes:
    # The same DS certificate goes into every SOD of a batch; serialise it once.
    der = _CERTIFICATE_DER.get(certificate)
    if der is None:
        if len(_CERTIFICATE_DER) > 64:
            _CERTIFICATE_DER.clear()
        der = certificate.public_bytes(Encoding.DER)
        _CERTIFICATE_DER[certificate] = der
    return der


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(UTC)


def _is_digits(text: str, length: int) -> bool:
    return len(text) == length and text.isascii() and text.isdigit()

