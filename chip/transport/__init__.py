"""Transports move APDU bytes to a card and back; they know no protocol (STYLE habit 1)."""

from chip.transport.base import CountingTransport, Transport, TransportStats, run_flow

__all__ = ["CountingTransport", "Transport", "TransportStats", "run_flow"]
