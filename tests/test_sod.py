"""EF.SOD (ICAO Doc 9303 Part 10, 4.6.2): BSI reference file, round trips, tampering, openssl."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import algos, cms, core
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st
from kat import h, load

from chip import pki
from chip.errors import EncodingError, VerificationError
from chip.lds.sod import OID_LDS_SECURITY_OBJECT, EFSod, build_sod

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
BSI = load("bsi-tr-03105/ef-sod.toml")
NOW = datetime.now(UTC).replace(microsecond=0)
START = NOW - timedelta(days=1)
SIGNED = START + timedelta(hours=1)
NOT_TRUSTED = ("DS certificate not signed by any trusted CSCA",)
BAD_SIGNATURE = "SignerInfo signature does not verify with the DS certificate"


# An independent decoder for the eContent (Part 10, 4.6.2.3), through asn1crypto's object model.
class DataGroupHash(core.Sequence):  # type: ignore[misc]
    _fields = [("number", core.Integer), ("hash", core.OctetString)]  # noqa: RUF012


class LDSVersionInfo(core.Sequence):  # type: ignore[misc]
    _fields = [("lds", core.PrintableString), ("unicode", core.PrintableString)]  # noqa: RUF012


class LDSSecurityObject(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("version", core.Integer),
        ("hash_algorithm", algos.DigestAlgorithm),
        ("hashes", core.SequenceOf, {"spec": DataGroupHash}),
        ("version_info", LDSVersionInfo, {"optional": True}),
    ]


def signer_info(sod: EFSod) -> cms.SignerInfo:
    return cms.ContentInfo.load(sod.signed_data_der)["content"]["signer_infos"][0]


def econtent(sod: EFSod) -> bytes:
    content = cms.ContentInfo.load(sod.signed_data_der)["content"]["encap_content_info"]
    data: bytes = content["content"].native
    return data


def attribute(sod: EFSod, name: str) -> object:
    for item in signer_info(sod)["signed_attrs"]:
        if item["type"].native == name:
            return item["values"][0].native
    raise KeyError(name)


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def tlv(tag: bytes, value: bytes) -> bytes:
    n = len(value)
    length = bytes([n]) if n < 0x80 else bytes([0x82]) + n.to_bytes(2, "big")
    return tag + length + value


DG_FILES = {
    1: h(BSI.named("dg1")["file"]),
    2: b"\x75\x82\x01\x00" + bytes(range(256)),
    3: b"\x63\x03\x02\x01\x00",
    14: h(BSI.named("dg14")["file"]),
    15: b"\x6f\x02\x30\x00",
}


@pytest.fixture(scope="module")
def p256() -> tuple[pki.Credential, pki.Credential]:
    csca = pki.create_csca(common_name="Test CSCA", not_before=START)
    return csca, pki.create_document_signer(csca, common_name="Test DS", not_before=START)


@pytest.fixture(scope="module", params=pki.KEY_ALGORITHMS)
def chain(request: pytest.FixtureRequest) -> tuple[pki.Credential, pki.Credential]:
    csca = pki.create_csca(common_name="Test CSCA", key_alg=request.param, not_before=START)
    ds = pki.create_document_signer(
        csca, common_name="Test DS", key_alg=request.param, not_before=START
    )
    return csca, ds


# --- known answer: BSI TR-03105-5 ReferenceDataSet EF_SOD.bin (chip-vectors 12.2) ------------


def test_bsi_reference_sod_parses() -> None:
    vector = BSI.named("ef_sod")
    raw = h(vector["sod"])
    sod = EFSod.from_bytes(raw)
    assert len(raw) == 1934
    assert sod.to_bytes() == raw
    assert sod.signed_data_der == raw[4:]
    assert sod.version == vector["lds_security_object_version"]
    assert sod.digest_algorithm == vector["digest_algorithm"]
    assert list(sod.dg_hashes) == vector["dg_numbers"]  # 1, 2, 3, 14, 4: the signer's order
    assert list(sod.dg_hashes.values()) == [h(value) for value in vector["dg_hashes"]]
    assert sod.signed_attributes == h(vector["signed_attrs"])
    message_digest = h(vector["message_digest"])
    assert attribute(sod, "message_digest") == message_digest
    assert sod.lds_security_object_der == econtent(sod)
    assert hashlib.sha256(econtent(sod)).digest() == message_digest
    assert attribute(sod, "content_type") == OID_LDS_SECURITY_OBJECT


def test_bsi_reference_ds_certificate() -> None:
    vector = BSI.named("ef_sod")
    ds = EFSod.from_bytes(h(vector["sod"])).ds_certificate
    assert ds.serial_number == int(vector["ds_serial"], 16)
    assert ds.subject.rfc4514_string() == vector["ds_subject"]
    assert ds.issuer.rfc4514_string() == vector["ds_issuer"]
    assert ds.not_valid_before_utc == vector["ds_not_before"]
    assert ds.not_valid_after_utc == vector["ds_not_after"]


def test_bsi_reference_rsassa_pss_signature_verifies() -> None:
    # The BSI CSCA is not public: with no trust anchor, the chain is the only failing check, so
    # contentType, messageDigest and the RSASSA-PSS signature with the embedded DSC all passed.
    sod = EFSod.from_bytes(h(BSI.named("ef_sod")["sod"]))
    with pytest.raises(VerificationError) as failure:
        sod.verify_signature([], at=datetime(2014, 6, 1, tzinfo=UTC))
    assert failure.value.reasons == NOT_TRUSTED


def test_bsi_reference_detects_a_flipped_signature_bit() -> None:
    raw = h(BSI.named("ef_sod")["sod"])
    sod = EFSod.from_bytes(flip(raw, len(raw) - 1))  # the signature is the last field
    with pytest.raises(VerificationError) as failure:
        sod.verify_signature([], at=datetime(2014, 6, 1, tzinfo=UTC))
    assert failure.value.reasons == (BAD_SIGNATURE, *NOT_TRUSTED)
    with pytest.raises(VerificationError) as late:
        EFSod.from_bytes(raw).verify_signature([], at=datetime(2020, 1, 1, tzinfo=UTC))
    assert late.value.reasons == ("DS certificate not valid at the verification time", *NOT_TRUSTED)


def test_bsi_reference_check_hashes_with_the_published_dg1_and_dg14() -> None:
    sod = EFSod.from_bytes(h(BSI.named("ef_sod")["sod"]))
    files = {1: h(BSI.named("dg1")["file"]), 14: h(BSI.named("dg14")["file"])}
    assert sod.check_hashes(files) == [
        "DG2: listed in EF.SOD but not present",
        "DG3: listed in EF.SOD but not present",
        "DG4: listed in EF.SOD but not present",
    ]
    # Re-encoding DG1 with a long-form length keeps its meaning but changes its hash: a writer
    # must hash the exact bytes it writes.
    reencoded = b"\x61\x81" + files[1][1:]
    assert sod.check_hashes({**files, 1: reencoded})[0] == "DG1: hash does not match EF.SOD"


# --- building ------------------------------------------------------------------------------


def test_round_trip_and_verify(chain: tuple[pki.Credential, pki.Credential]) -> None:
    csca, ds = chain
    sod = build_sod(DG_FILES, pki.LocalDocumentSigner(ds), signing_time=SIGNED)
    again = EFSod.from_bytes(sod.to_bytes())
    assert again == sod
    assert again.dg_hashes == {n: hashlib.sha256(data).digest() for n, data in DG_FILES.items()}
    assert again.version == 0 and again.digest_algorithm == "sha256"
    assert again.check_hashes(DG_FILES) == []
    assert again.ds_certificate == ds.certificate
    again.verify_signature([csca.certificate])
    again.verify_signature([csca.certificate], at=SIGNED)


def test_output_is_der_as_asn1crypto_encodes_it(
    p256: tuple[pki.Credential, pki.Credential],
) -> None:
    sod = build_sod(DG_FILES, pki.LocalDocumentSigner(p256[1]), signing_time=SIGNED)
    assert sod.to_bytes()[0] == 0x77
    content_info = cms.ContentInfo.load(sod.signed_data_der, strict=True)
    assert content_info.dump(force=True) == sod.signed_data_der
    signed_data = content_info["content"]
    assert signed_data["version"].native == "v3"
    assert [a["algorithm"].native for a in signed_data["digest_algorithms"]] == ["sha256"]
    assert signed_data["encap_content_info"]["content_type"].dotted == "2.23.136.1.1.1"
    info = signed_data["signer_infos"][0]
    assert info["version"].native == "v1"
    assert info["sid"].name == "issuer_and_serial_number"
    assert info["sid"].chosen["serial_number"].native == p256[1].certificate.serial_number
    assert info["signature_algorithm"]["algorithm"].native == "sha256_ecdsa"
    assert [a["type"].native for a in info["signed_attrs"]] == [
        "content_type",
        "signing_time",
        "message_digest",
    ]
    assert attribute(sod, "signing_time") == SIGNED
    lds = LDSSecurityObject.load(econtent(sod), strict=True)
    assert lds.dump(force=True) == econtent(sod)
    assert lds["version"].native == 0
    assert lds["hash_algorithm"].native == {"algorithm": "sha256", "parameters": None}
    assert [item["number"].native for item in lds["hashes"]] == sorted(DG_FILES)
    assert lds["version_info"].native is None


def test_lds_version_info_makes_version_1(p256: tuple[pki.Credential, pki.Credential]) -> None:
    signer = pki.LocalDocumentSigner(p256[1])
    sod = build_sod(DG_FILES, signer, lds_version_info=("0108", "040000"), digest="sha384")
    assert sod.version == 1
    assert sod.digest_algorithm == "sha384"
    lds = LDSSecurityObject.load(econtent(sod), strict=True)
    assert lds["version_info"].native == {"lds": "0108", "unicode": "040000"}
    assert sod.dg_hashes[2] == hashlib.sha384(DG_FILES[2]).digest()
    sod.verify_signature([p256[0].certificate])


def test_ecdsa_sod_is_reproducible(p256: tuple[pki.Credential, pki.Credential]) -> None:
    signer = pki.LocalDocumentSigner(p256[1])
    first = build_sod(DG_FILES, signer, signing_time=SIGNED)
    assert build_sod(DG_FILES, signer, signing_time=SIGNED).to_bytes() == first.to_bytes()
    later = build_sod(DG_FILES, signer, signing_time=SIGNED + timedelta(seconds=1))
    assert later.to_bytes() != first.to_bytes()


def test_signing_time_defaults_to_now_and_uses_generalized_time_after_2049(
    p256: tuple[pki.Credential, pki.Credential],
) -> None:
    signer = pki.LocalDocumentSigner(p256[1])
    stamped = attribute(build_sod(DG_FILES, signer), "signing_time")
    assert isinstance(stamped, datetime)
    assert abs(stamped - datetime.now(UTC)) < timedelta(seconds=5)
    far = build_sod(DG_FILES, signer, signing_time=datetime(2050, 1, 2, 3, 4, 5, tzinfo=UTC))
    time_value = next(
        item["values"][0]
        for item in signer_info(far)["signed_attrs"]
        if item["type"].native == "signing_time"
    )
    assert time_value.name == "generalized_time"


@pytest.mark.parametrize(
    ("files", "kwargs"),
    [
        ({1: b"x"}, {}),  # Part 10: at least two data groups
        ({1: b"x", 17: b"y"}, {}),
        ({0: b"x", 1: b"y"}, {}),
        ({1: b"x", 2: b"y"}, {"digest": "sha1"}),
        ({1: b"x", 2: b"y"}, {"signing_time": datetime(2026, 1, 1)}),  # naive
        ({1: b"x", 2: b"y"}, {"lds_version_info": ("1.8", "040000")}),
    ],
)
def test_build_rejects_misuse(
    p256: tuple[pki.Credential, pki.Credential], files: dict[int, bytes], kwargs: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        build_sod(files, pki.LocalDocumentSigner(p256[1]), **kwargs)  # type: ignore[arg-type]


class Pkcs1Signer:
    """A DocumentSigner that is not LocalDocumentSigner: RSA PKCS#1 v1.5, as many States sign."""

    def __init__(self, credential: pki.Credential, algorithm: str) -> None:
        assert isinstance(credential.private_key, rsa.RSAPrivateKey)
        self._key = credential.private_key
        self.certificate = credential.certificate
        self.signature_algorithm = algos.SignedDigestAlgorithm(
            {"algorithm": algorithm, "parameters": core.Null()}
        ).dump()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize("algorithm", ["sha256_rsa", "rsassa_pkcs1v15"])
def test_rsa_pkcs1_v15_sods_verify(algorithm: str) -> None:
    # sha256WithRSAEncryption, and plain rsaEncryption with the hash taken from the SignerInfo
    # digestAlgorithm (RFC 3370 3.2).
    csca = pki.create_csca(common_name="C", not_before=START)
    ds = pki.create_document_signer(csca, common_name="D", key_alg="rsa-pss-3072", not_before=START)
    sod = build_sod(DG_FILES, Pkcs1Signer(ds, algorithm))
    sod.verify_signature([csca.certificate])
    tampered = EFSod.from_bytes(flip(sod.to_bytes(), len(sod.to_bytes()) - 1))
    with pytest.raises(VerificationError) as failure:
        tampered.verify_signature([csca.certificate])
    assert failure.value.reasons == (BAD_SIGNATURE,)


# --- tampering and trust -------------------------------------------------------------------


def test_ds_from_another_csca_fails_the_chain(p256: tuple[pki.Credential, pki.Credential]) -> None:
    csca, ds = p256
    stranger = pki.create_csca(common_name="Other CSCA", not_before=START)
    sod = build_sod(DG_FILES, pki.LocalDocumentSigner(ds))
    with pytest.raises(VerificationError) as failure:
        sod.verify_signature([stranger.certificate])
    assert failure.value.reasons == NOT_TRUSTED
    with pytest.raises(VerificationError):
        sod.verify_signature([])
    sod.verify_signature([stranger.certificate, csca.certificate])


def test_csca_key_rollover_under_the_same_name(p256: tuple[pki.Credential, pki.Credential]) -> None:
    csca, ds = p256
    successor = pki.create_csca(common_name="Test CSCA", not_before=START)
    assert successor.certificate.subject == csca.certificate.subject
    sod = build_sod(DG_FILES, pki.LocalDocumentSigner(ds))
    with pytest.raises(VerificationError) as failure:
        sod.verify_signature([successor.certificate])
    assert failure.value.reasons == NOT_TRUSTED
    sod.verify_signature([successor.certificate, csca.certificate])


def test_validity_is_checked_at_the_given_time(
    p256: tuple[pki.Credential, pki.Credential],
) -> None:
    csca, ds = p256
    sod = build_sod(DG_FILES, pki.LocalDocumentSigner(ds))
    with pytest.raises(VerificationError) as failure:
        sod.verify_signature([csca.certificate], at=START - timedelta(seconds=1))
    assert failure.value.reasons == (
        "DS certificate not valid at the verification time",
        "CSCA certificate not valid at the verification time",
    )
    with pytest.raises(ValueError):
        sod.verify_signature([csca.certificate], at=datetime(2030, 1, 1))  # naive


@pytest.fixture(scope="module")
def p256_sod(p256: tuple[pki.Credential, pki.Credential]) -> EFSod:
    return build_sod(DG_FILES, pki.LocalDocumentSigner(p256[1]), signing_time=SIGNED)


@given(data=st.data())
def test_a_flipped_bit_in_a_dg_is_reported_for_that_dg(
    p256_sod: EFSod, data: st.DataObject
) -> None:
    number = data.draw(st.sampled_from(sorted(DG_FILES)))
    index = data.draw(st.integers(0, len(DG_FILES[number]) - 1))
    bit = data.draw(st.integers(0, 7))
    files = {**DG_FILES, number: flip(DG_FILES[number], index, bit)}
    assert p256_sod.check_hashes(files) == [f"DG{number}: hash does not match EF.SOD"]


def test_missing_and_extra_dgs_are_reported(p256_sod: EFSod) -> None:
    files = {n: data for n, data in DG_FILES.items() if n != 3}
    files[11] = b"\x6b\x00"
    assert p256_sod.check_hashes(files) == [
        "DG3: listed in EF.SOD but not present",
        "DG11: present but not listed in EF.SOD",
    ]


@pytest.mark.parametrize("region", ["signature", "econtent", "signed_attrs"])
@given(data=st.data())
def test_a_flipped_bit_in_signed_material_fails(
    p256: tuple[pki.Credential, pki.Credential], p256_sod: EFSod, region: str, data: st.DataObject
) -> None:
    raw = p256_sod.to_bytes()
    if region == "signature":
        target: bytes = signer_info(p256_sod)["signature"].native
    elif region == "econtent":
        target = econtent(p256_sod)
    else:
        target = signer_info(p256_sod)["signed_attrs"].contents
    start = raw.index(target)
    index = data.draw(st.integers(start, start + len(target) - 1))
    tampered = flip(raw, index, data.draw(st.integers(0, 7)))
    try:
        sod = EFSod.from_bytes(tampered)
    except EncodingError:
        return
    with pytest.raises(VerificationError):
        sod.verify_signature([p256[0].certificate])


@given(data=st.data())
def test_any_corruption_raises_only_the_documented_errors(
    p256: tuple[pki.Credential, pki.Credential], p256_sod: EFSod, data: st.DataObject
) -> None:
    raw = p256_sod.to_bytes()
    index = data.draw(st.integers(0, len(raw) - 1))
    tampered = flip(raw, index, data.draw(st.integers(0, 7)))
    try:
        sod = EFSod.from_bytes(tampered)
        sod.verify_signature([p256[0].certificate])
        sod.check_hashes(DG_FILES)
    except (EncodingError, VerificationError):
        pass


@given(st.binary(max_size=300))
def test_garbage_is_an_encoding_error(garbage: bytes) -> None:
    with pytest.raises(EncodingError):
        EFSod.from_bytes(garbage)


def test_malformed_files_are_encoding_errors(p256_sod: EFSod) -> None:
    raw = p256_sod.to_bytes()
    for bad in (
        b"",
        raw[:-1],  # truncated
        raw + b"\x00",  # trailing byte
        b"\x30" + raw[1:],  # not tag 77
        tlv(b"\x77", tlv(b"\x30", b"\x06\x03\x55\x04\x03")),  # not SignedData
    ):
        with pytest.raises(EncodingError):
            EFSod.from_bytes(bad)


def test_ber_indefinite_lengths_and_segmented_econtent_are_read(
    p256: tuple[pki.Credential, pki.Credential], p256_sod: EFSod
) -> None:
    # Some issuers' SODs use BER indefinite lengths (proxmark3 PR #1145, US passports); the
    # signature covers only the DER signedAttrs, so such a file still verifies.
    signed_data = cms.ContentInfo.load(p256_sod.signed_data_der)["content"]
    content = econtent(p256_sod)
    eoc = b"\x00\x00"
    segments = tlv(b"\x04", content[:50]) + tlv(b"\x04", content[50:])
    encap = b"\x30\x80\x06\x06\x67\x81\x08\x01\x01\x01\xa0\x80\x24\x80" + segments + eoc + eoc + eoc
    body = (
        signed_data["version"].dump()
        + signed_data["digest_algorithms"].dump()
        + encap
        + signed_data["certificates"].dump()
        + signed_data["signer_infos"].dump()
    )
    ber = (
        b"\x77\x80\x30\x80\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02\xa0\x80\x30\x80"
        + body
        + eoc * 4
    )
    sod = EFSod.from_bytes(ber)
    assert sod.dg_hashes == p256_sod.dg_hashes
    assert sod.to_bytes() == ber
    sod.verify_signature([p256[0].certificate])
    assert sod.check_hashes(DG_FILES) == []


@given(
    files=st.dictionaries(
        st.integers(1, 16), st.binary(min_size=0, max_size=64), min_size=2, max_size=16
    )
)
def test_round_trip_property(
    p256: tuple[pki.Credential, pki.Credential], files: dict[int, bytes]
) -> None:
    signer = pki.LocalDocumentSigner(p256[1])
    sod = EFSod.from_bytes(build_sod(files, signer, signing_time=SIGNED).to_bytes())
    assert list(sod.dg_hashes) == sorted(files)
    assert sod.dg_hashes == {n: hashlib.sha256(data).digest() for n, data in files.items()}
    assert sod.check_hashes(files) == []
    sod.verify_signature([p256[0].certificate])


# --- an independent tool -------------------------------------------------------------------


def _openssl_cms_verify(
    tmp_path: Path, sod: EFSod, csca: x509.Certificate
) -> subprocess.CompletedProcess[bytes]:
    (tmp_path / "sod.der").write_bytes(sod.signed_data_der)
    (tmp_path / "csca.pem").write_bytes(csca.public_bytes(serialization.Encoding.PEM))
    return subprocess.run(
        [
            OPENSSL, "cms", "-verify", "-inform", "DER",
            "-in", str(tmp_path / "sod.der"),
            "-CAfile", str(tmp_path / "csca.pem"),
            "-purpose", "any",
            "-out", str(tmp_path / "content.bin"),
        ],
        check=False,
        capture_output=True,
    )  # fmt: skip


@pytest.mark.integration
def test_openssl_cms_verifies_a_fresh_sod(
    tmp_path: Path, chain: tuple[pki.Credential, pki.Credential]
) -> None:
    csca, ds = chain
    sod = build_sod(DG_FILES, pki.LocalDocumentSigner(ds))
    result = _openssl_cms_verify(tmp_path, sod, csca.certificate)
    assert result.returncode == 0, result.stderr
    assert b"Verification successful" in result.stderr
    assert (tmp_path / "content.bin").read_bytes() == sod.lds_security_object_der

    raw = sod.to_bytes()
    last_hash_octet = raw.index(econtent(sod)) + len(econtent(sod)) - 1
    tampered = EFSod.from_bytes(flip(raw, last_hash_octet))
    assert _openssl_cms_verify(tmp_path, tampered, csca.certificate).returncode != 0
    stranger = pki.create_csca(common_name="Test CSCA", not_before=START)
    assert _openssl_cms_verify(tmp_path, sod, stranger.certificate).returncode != 0


@pytest.mark.integration
def test_openssl_agrees_on_the_bsi_reference_signature(tmp_path: Path) -> None:
    # -noverify: the signature is checked, the chain (to the unpublished BSI CSCA) is not.
    sod = EFSod.from_bytes(h(BSI.named("ef_sod")["sod"]))
    (tmp_path / "bsi.der").write_bytes(sod.signed_data_der)
    result = subprocess.run(
        [OPENSSL, "cms", "-verify", "-noverify", "-inform", "DER",
         "-in", str(tmp_path / "bsi.der"), "-out", str(tmp_path / "content.bin")],
        check=False,
        capture_output=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "content.bin").read_bytes() == econtent(sod)
