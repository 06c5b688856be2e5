"""Injected randomness (STYLE habit 2): every protocol takes a ``RandomSource``.

Worked examples pass a source that replays the published values; production uses ``os.urandom``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

__all__ = ["RandomSource", "ScriptedRandom", "system_random"]

RandomSource = Callable[[int], bytes]


def system_random(n: int) -> bytes:
    return os.urandom(n)


class ScriptedRandom:
    """Replays fixed byte strings in order; each call must ask for exactly the next one's length."""

    def __init__(self, values: Iterable[bytes]) -> None:
        self._values = list(values)

    def __call__(self, n: int) -> bytes:
        if not self._values:
            raise ValueError("scripted randomness exhausted")
        value = self._values.pop(0)
        if len(value) != n:
            raise ValueError(f"scripted value has {len(value)} bytes, {n} requested")
        return value
