"""The transport seam and the one synchronous driver for APDU flows.

Protocol steps (BAC, SCP03, the perso script, the readback) are generators that yield
:class:`~chip.apdu.CommandAPDU` objects and receive :class:`~chip.apdu.ResponseAPDU` objects;
their return value is the protocol's result.  ``run_flow`` drives one over any transport.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from chip.apdu import CommandAPDU, ResponseAPDU

__all__ = ["CountingTransport", "Flow", "Transport", "TransportStats", "run_flow"]

T = TypeVar("T")
Flow = Generator[CommandAPDU, ResponseAPDU, T]


class Transport(Protocol):
    """Sends one command APDU (raw bytes) and returns the raw response (data + SW)."""

    def transmit(self, apdu: bytes) -> bytes: ...


@dataclass(slots=True)
class TransportStats:
    apdus: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0


class CountingTransport:
    """Wraps a transport and counts APDUs, bytes and wall time spent in ``transmit``."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.stats = TransportStats()

    def transmit(self, apdu: bytes) -> bytes:
        start = time.perf_counter()
        response = self.inner.transmit(apdu)
        self.stats.seconds += time.perf_counter() - start
        self.stats.apdus += 1
        self.stats.bytes_sent += len(apdu)
        self.stats.bytes_received += len(response)
        return response


def run_flow(flow: Flow[T], transport: Transport) -> T:
    """Drive ``flow`` to completion over ``transport`` and return its result."""
    try:
        command = next(flow)
        while True:
            response = ResponseAPDU.from_bytes(transport.transmit(command.to_bytes()))
            command = flow.send(response)
    except StopIteration as done:
        result: T = done.value
        return result
