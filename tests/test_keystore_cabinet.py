"""The keystore's e-cabinet keys: one stored root, derived keys separated by purpose and site."""

from __future__ import annotations

from pathlib import Path

import pytest

from personaliser.cli import main
from personaliser.errors import KeystoreError
from personaliser.keystore import FileKeystore
from personaliser.operations import Home


def test_init_provisions_a_private_cabinet_key(tmp_path: Path) -> None:
    ks = FileKeystore.init(tmp_path / "keys")
    path = ks.path / "cabinet.key"
    assert path.stat().st_mode & 0o077 == 0
    assert len(bytes.fromhex(path.read_text())) == 32
    with pytest.raises(FileExistsError):
        FileKeystore.add_cabinet_key(ks.path)  # never replaces one


def test_derived_keys_are_distinct_stable_and_per_site(tmp_path: Path) -> None:
    ks = FileKeystore.init(tmp_path / "keys")
    again = FileKeystore(ks.path)
    s1, s2 = ks.site_key("S1"), ks.site_key("S2")
    assert s1.cabinet("C1").to_bytes() == again.site_key("S1").cabinet("C1").to_bytes()
    assert s1.cabinet("C1").to_bytes() != s2.cabinet("C1").to_bytes()
    keys = {ks.lookup_key(), ks.audit_key(), ks.data_key(), s1.cabinet("C1").command}
    assert len(keys) == 4 and all(len(k) == 32 for k in keys)
    # Another keystore's keys share nothing with these.
    other = FileKeystore.init(tmp_path / "other")
    assert other.lookup_key() != ks.lookup_key()
    assert other.site_key("S1").cabinet("C1").to_bytes() != s1.cabinet("C1").to_bytes()
    assert "cabinet" not in repr(ks) and ks.site_key("S1").cabinet("C1").command.hex() not in repr(
        s1
    )


def test_an_old_keystore_gets_its_cabinet_key_from_the_home_or_the_cli(tmp_path: Path) -> None:
    ks = FileKeystore.init(tmp_path / "home" / "keys")
    (ks.path / "cabinet.key").unlink()
    with pytest.raises(KeystoreError, match="add-cabinet-key"):
        ks.site_key("S1")
    assert main(["keys", "add-cabinet-key", "--dir", str(ks.path)]) == 0
    ks.site_key("S1")
    (ks.path / "cabinet.key").unlink()
    Home(tmp_path / "home").ensure().audit_key()  # ensure() provisions what is missing


def test_a_readable_cabinet_key_is_refused(tmp_path: Path) -> None:
    ks = FileKeystore.init(tmp_path / "keys")
    (ks.path / "cabinet.key").chmod(0o644)
    with pytest.raises(KeystoreError, match="readable by others"):
        ks.audit_key()
