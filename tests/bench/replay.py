"""Record a chip's answers once, then replay them, so a benchmark times the host side alone."""

from __future__ import annotations

import random

from chip.transport.base import Transport


def seeded(seed: int):  # type: ignore[no-untyped-def]
    """A reproducible RandomSource (benchmarks only: never for keys)."""
    rng = random.Random(seed)
    return rng.randbytes


class Recorder:
    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.responses: list[bytes] = []

    def transmit(self, apdu: bytes) -> bytes:
        response = self.inner.transmit(apdu)
        self.responses.append(response)
        return response


class Replay:
    """Answers with the recorded responses in order (the chip's share of the work is not timed)."""

    def __init__(self, responses: list[bytes]) -> None:
        self.responses = responses
        self.i = 0

    def transmit(self, apdu: bytes) -> bytes:
        response = self.responses[self.i]
        self.i += 1
        return response
