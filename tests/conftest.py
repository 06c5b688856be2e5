from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# CI gets more examples; a developer's run stays quick.
# No per-example deadline: a loaded 2-core machine makes timings unreliable (a slow example is
# not a failure of the property); the whole-suite time is watched instead.
settings.register_profile(
    "ci", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def keystore(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A file keystore (test CSCA, Document Signer, perso master key) shared by the session."""
    from personaliser.keystore import FileKeystore

    return FileKeystore.init(tmp_path_factory.mktemp("keys") / "ks")


@pytest.fixture(scope="session")
def applications():  # type: ignore[no-untyped-def]
    """Five synthetic approved applications."""
    from personaliser.synth import synth_applications

    return list(synth_applications(5, seed=7))


# -- the real PC/SC stack: our own pcscd with vpcd readers (tests/pcscd.py) ----------------------

#: Slots of the session's pcscd (starting pcscd is the slow part; tests lease slots from it).
PCSC_TEST_READERS = 8


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Our own pcscd with PCSC_TEST_READERS vpcd slots; fails (never skips) if one is running."""
    from tests.pcscd import PcscdError, make_pcscd

    daemon = make_pcscd(PCSC_TEST_READERS, tmp_path_factory.mktemp("pcscd"))
    problem = None
    try:
        daemon.start()
    except PcscdError as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def reader_pool(pcscd):  # type: ignore[no-untyped-def]
    from tests.pcscd import ReaderPool

    return ReaderPool(pcscd)


@pytest.fixture
def vreader(reader_pool):  # type: ignore[no-untyped-def]
    """One vpcd slot (reader name, card port) to this test alone; it must leave it empty."""
    with reader_pool.lease() as (slot,):
        yield slot


@pytest.fixture
def vcard(vreader):  # type: ignore[no-untyped-def]
    """A started VirtualCardSocket on the leased slot; insert cards into it. Stopped afterwards."""
    from chip.transport.vpcd import VirtualCardSocket

    link = VirtualCardSocket("127.0.0.1", vreader.port, mute_timeout_s=0.5)
    link.start()
    try:
        yield link
    finally:
        link.stop()


# -- Mosquitto (ecabinet.mosquitto; helpers in tests/brokers.py) ---------- begin mosquitto block --


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One Mosquitto (TLS, passwords, ACLs) for the session, site ``tests.brokers.SITE``, on a free
    loopback port.  Share it politely: own cabinet ids (``unique_id``), no kill/restart, no
    retained messages left behind; use ``fresh_mosquitto`` for those.  Fails if mosquitto is
    missing (Debian package mosquitto)."""
    from ecabinet.mosquitto import MosquittoError
    from tests.brokers import fail_message, start_mosquitto

    try:
        broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    except MosquittoError as exc:
        pytest.fail(fail_message(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def fresh_mosquitto(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A Mosquitto of this test's own (to kill, restart, or fill with retained messages)."""
    from ecabinet.mosquitto import MosquittoError
    from tests.brokers import fail_message, start_mosquitto

    try:
        broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    except MosquittoError as exc:
        pytest.fail(fail_message(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


# -- end mosquitto block ------------------------------------------------------------------------
