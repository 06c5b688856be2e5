"""The test PKI: certificate profile (ICAO Doc 9303 Part 12, 7.1.1), signer seam, key files."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import algos, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID
from hypothesis import given
from hypothesis import strategies as st

from chip import pki
from chip.random import ScriptedRandom

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)


@pytest.fixture(scope="module", params=pki.KEY_ALGORITHMS)
def chain(request: pytest.FixtureRequest) -> tuple[pki.Credential, pki.Credential]:
    csca = pki.create_csca(common_name="Test CSCA", key_alg=request.param, not_before=NOW)
    ds = pki.create_document_signer(
        csca, common_name="Test DS", key_alg=request.param, not_before=NOW
    )
    return csca, ds


def _critical(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    return certificate.extensions.get_extension_for_oid(oid).critical


def test_csca_profile(chain: tuple[pki.Credential, pki.Credential]) -> None:
    cert = chain[0].certificate
    assert cert.version is x509.Version.v3
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "CN"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Test CSCA"

    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0

    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature

    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical
    assert ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier == ski.value.digest

    period = cert.extensions.get_extension_for_class(x509.PrivateKeyUsagePeriod).value
    assert period.not_before == NOW.replace(tzinfo=None)
    assert cert.not_valid_before_utc == NOW
    assert cert.not_valid_after_utc > NOW + timedelta(days=15 * 365)
    cert.verify_directly_issued_by(cert)


def test_document_signer_profile(chain: tuple[pki.Credential, pki.Credential]) -> None:
    csca, ds = chain[0].certificate, chain[1].certificate
    assert ds.version is x509.Version.v3
    assert ds.issuer == csca.subject
    assert ds.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "CN"

    usage = ds.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.crl_sign)

    csca_ski = csca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ds.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert not aki.critical and aki.value.key_identifier == csca_ski.digest
    ski = ds.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(ds.public_key())

    document_types = ds.extensions.get_extension_for_oid(pki.OID_DOCUMENT_TYPE_LIST)
    assert not document_types.critical
    assert isinstance(document_types.value, x509.UnrecognizedExtension)
    # Part 12: DocumentTypeListSyntax ::= SEQUENCE { version v0, docTypeList SET OF "ID" }
    assert document_types.value.value == bytes.fromhex("3009 020100 3104 13024944")

    with pytest.raises(x509.ExtensionNotFound):
        ds.extensions.get_extension_for_class(x509.BasicConstraints)
    assert not _critical(ds, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
    assert ds.not_valid_after_utc <= csca.not_valid_after_utc
    ds.verify_directly_issued_by(csca)


def test_certificate_signature_algorithms() -> None:
    csca = pki.create_csca(common_name="C", key_alg="rsa-pss-3072", not_before=NOW)
    assert csca.certificate.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
    pss = csca.certificate.signature_algorithm_parameters
    assert isinstance(pss, padding.PSS)
    ds = pki.create_document_signer(csca, common_name="D", not_before=NOW)
    assert ds.certificate.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS
    assert isinstance(ds.certificate.public_key(), ec.EllipticCurvePublicKey)

    brainpool = pki.create_csca(common_name="B", key_alg="ecdsa-brainpoolP256r1")
    key = brainpool.certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert isinstance(key.curve, ec.BrainpoolP256R1)
    assert brainpool.certificate.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256


def test_serial_comes_from_the_injected_random_source() -> None:
    csca = pki.create_csca(common_name="C", random=ScriptedRandom([b"\xff" * 16]))
    assert csca.certificate.serial_number == (1 << 127) - 1
    ds = pki.create_document_signer(csca, common_name="D", random=ScriptedRandom([bytes(16)]))
    assert ds.certificate.serial_number == 1


@given(st.binary(min_size=16, max_size=16))
def test_serial_is_positive_and_short(random_bytes: bytes) -> None:
    serial = pki._serial(lambda n: random_bytes[:n])
    assert 0 < serial < 1 << 127  # RFC 5280 4.1.2.2: positive, at most 20 octets


class _DocumentTypeList(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("version", core.Integer),
        ("docTypeList", core.SetOf, {"spec": core.PrintableString}),
    ]


@given(
    st.lists(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=2),
        min_size=1,
        max_size=6,
        unique=True,
    )
)
def test_document_type_list_round_trip(codes: list[str]) -> None:
    der = pki.document_type_list(codes)
    decoded = _DocumentTypeList.load(der, strict=True)
    assert decoded["version"].native == 0
    assert sorted(decoded["docTypeList"].native) == sorted(codes)
    assert decoded.dump(force=True) == der  # DER: the SET OF is sorted


@pytest.mark.parametrize("codes", [[], ["id"], ["IDX"], ["1"], [""]])
def test_document_type_list_rejects_non_mrz_codes(codes: list[str]) -> None:
    with pytest.raises(ValueError):
        pki.document_type_list(codes)


def test_misuse_is_value_error() -> None:
    with pytest.raises(ValueError):
        pki.create_csca(country="chn", common_name="C")
    with pytest.raises(ValueError):
        pki.create_csca(common_name="C", key_alg="dsa-1024")
    with pytest.raises(ValueError):
        pki.create_csca(common_name="C", not_before=datetime(2030, 1, 1))  # naive
    with pytest.raises(ValueError):
        pki.create_csca(common_name="")
    csca = pki.create_csca(common_name="C", validity_days=30)
    with pytest.raises(ValueError, match="within the CSCA"):
        pki.create_document_signer(csca, common_name="D", validity_days=31)


def test_local_signer_signs_signed_attributes(chain: tuple[pki.Credential, pki.Credential]) -> None:
    ds = chain[1]
    signer = pki.LocalDocumentSigner(ds)
    assert signer.certificate == ds.certificate
    data = b"\x31\x03\x02\x01\x05"
    signature = signer.sign(data)
    key = ds.certificate.public_key()
    algorithm = algos.SignedDigestAlgorithm.load(signer.signature_algorithm, strict=True)
    if isinstance(key, ec.EllipticCurvePublicKey):
        assert algorithm["algorithm"].native == "sha256_ecdsa"
        assert algorithm["parameters"].native is None
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        assert signer.sign(data) == signature  # RFC 6979: deterministic
        with pytest.raises(InvalidSignature):
            key.verify(signature, data + b"\x00", ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        assert algorithm["algorithm"].native == "rsassa_pss"
        params = algorithm["parameters"].native
        assert params["hash_algorithm"]["algorithm"] == "sha256"
        assert params["mask_gen_algorithm"]["parameters"]["algorithm"] == "sha256"
        assert params["salt_length"] == 32
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        key.verify(signature, data, pss, hashes.SHA256())


def test_pss_algorithm_identifier_matches_the_bsi_reference_sod() -> None:
    # The signatureAlgorithm of the BSI TR-03105-5 EF_SOD.bin SignerInfo (chip-vectors 12.2).
    bsi = bytes.fromhex(
        "304106092A864886F70D01010A3034A00F300D06096086480165030402010500A11C301A06092A864886"
        "F70D010108300D06096086480165030402010500A203020120"
    )
    csca = pki.create_csca(common_name="C", key_alg="rsa-pss-3072")
    assert pki.LocalDocumentSigner(csca).signature_algorithm == bsi


def test_reprs_hide_key_material(chain: tuple[pki.Credential, pki.Credential]) -> None:
    ds = chain[1]
    key = ds.private_key
    secret = str(
        key.private_numbers().private_value
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else key.private_numbers().d
    )
    for text in (repr(ds), str(ds), repr(pki.LocalDocumentSigner(ds))):
        assert secret not in text
        assert "PRIVATE" not in text
        assert "private_key" not in text


def test_private_key_file_is_owner_only_and_never_overwritten(
    tmp_path: Path, chain: tuple[pki.Credential, pki.Credential]
) -> None:
    key = chain[1].private_key
    path = tmp_path / "ds.key"
    old_umask = os.umask(0)  # even with a permissive umask the file must not be readable by others
    try:
        pki.save_private_key(key, path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        pki.save_private_key(key, path)
    loaded = pki.load_private_key(path)
    assert loaded.private_numbers() == key.private_numbers()


def test_encrypted_private_key_round_trip(tmp_path: Path) -> None:
    csca = pki.create_csca(common_name="C")
    path = tmp_path / "csca.key"
    pki.save_private_key(csca.private_key, path, password=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    with pytest.raises((ValueError, TypeError)):
        pki.load_private_key(path)
    with pytest.raises(ValueError):
        pki.load_private_key(path, password=b"wrong")
    loaded = pki.load_private_key(path, password=b"correct horse")
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == csca.private_key.private_numbers()


def test_certificate_file_round_trip(tmp_path: Path) -> None:
    csca = pki.create_csca(common_name="C")
    path = tmp_path / "csca.pem"
    pki.save_certificate(csca.certificate, path)
    assert path.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert pki.load_certificate(path) == csca.certificate


def _write_pem(certificate: x509.Certificate, path: Path) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.integration
def test_openssl_shows_the_profile_and_accepts_the_chain(
    tmp_path: Path, chain: tuple[pki.Credential, pki.Credential]
) -> None:
    csca = _write_pem(chain[0].certificate, tmp_path / "csca.pem")
    ds = _write_pem(chain[1].certificate, tmp_path / "ds.pem")

    def text(path: Path) -> str:
        return subprocess.run(
            [OPENSSL, "x509", "-noout", "-text", "-in", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    csca_text = text(csca)
    assert "X509v3 Basic Constraints: critical" in csca_text
    assert "CA:TRUE, pathlen:0" in csca_text
    assert "X509v3 Key Usage: critical" in csca_text
    assert "Certificate Sign, CRL Sign" in csca_text
    assert "X509v3 Subject Key Identifier" in csca_text
    assert "X509v3 Private Key Usage Period" in csca_text
    assert "C = CN, CN = Test CSCA" in csca_text

    ds_text = text(ds)
    assert "X509v3 Key Usage: critical" in ds_text
    assert "Digital Signature" in ds_text
    assert "X509v3 Authority Key Identifier" in ds_text
    assert "2.23.136.1.1.6.2:" in ds_text
    assert "Basic Constraints" not in ds_text

    verify = subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(csca), str(ds)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    stranger = _write_pem(pki.create_csca(common_name="Test CSCA").certificate, tmp_path / "x.pem")
    refused = subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(stranger), str(ds)],
        check=False,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
