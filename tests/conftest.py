from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# CI gets more examples; a developer's run stays quick.
settings.register_profile("ci", max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100)
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
