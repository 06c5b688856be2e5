from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# CI gets more examples; a developer's run stays quick.
settings.register_profile("ci", max_examples=300, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
