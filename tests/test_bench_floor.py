"""The crypto floors (bench.floor): the protocol floor replays what one card really exchanges.

- the recorded profile is the card's: its data groups are the plan's, every byte of the LDS goes
  out under SCP03 (C-DECRYPTION) and comes back under BAC secure messaging, with the message
  count the line uses (4 KiB writes, extended reads);
- the profile carries lengths and the data groups the floor hashes, nothing that names the holder;
- the protocol floor costs more than the bulk floor (it does all the bulk floor does, per message,
  plus the keys, cryptograms and the signature check) and both are positive;
- recording leaves the secure-messaging classes as they were.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.engine import prepare_home
from bench.floor import bulk_floor_ms, protocol_floor_ms, record_profile
from chip.crypto.sm import SecureMessaging
from chip.perso import build_plan
from chip.protocols.scp03 import Scp03HostSession
from personaliser.keystore import FileKeystore
from personaliser.synth import synth_applications


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> FileKeystore:
    _home, keystore = prepare_home(Path(tmp_path_factory.mktemp("floor")), 1)
    return keystore


def test_the_profile_is_the_cards_message_sizes(keystore: FileKeystore) -> None:
    wrap, unwrap = SecureMessaging.wrap_command, SecureMessaging.unwrap_response
    scp03_wrap = Scp03HostSession.wrap_command
    profile = record_profile(keystore, seed=0)
    assert (SecureMessaging.wrap_command, SecureMessaging.unwrap_response) == (wrap, unwrap)
    assert Scp03HostSession.wrap_command is scp03_wrap

    app = next(synth_applications(1, seed=0))
    plan = build_plan(app.to_holder(), keystore.document_signer())
    assert list(profile.data_groups) == list(plan.dg_files.values())
    lds = sum(len(f.data) for f in plan.files)
    # Every file is written (plus file-creation commands) and read back in full.
    assert profile.bytes_written >= lds
    assert profile.bytes_read >= lds - len(plan.file("EF.COM")) // 2
    # 4 KiB writes and extended reads: a handful of messages each way, not hundreds.
    assert len(profile.scp03_commands) >= len(plan.files)
    assert max(profile.scp03_commands) <= 4096
    assert len(profile.bac_commands) >= len(plan.files) - 1
    assert max(r for _, r in profile.bac_commands) > 4096  # the portrait comes in one answer
    text = repr(profile.scp03_commands) + repr(profile.bac_commands)
    assert app.surname.upper() not in text and app.document_number not in text


def test_the_protocol_floor_is_above_the_bulk_floor(keystore: FileKeystore) -> None:
    profile = record_profile(keystore, seed=0)
    bulk = bulk_floor_ms(keystore, rounds=20)
    protocol = protocol_floor_ms(keystore, profile, rounds=20)
    assert 0 < bulk < protocol
