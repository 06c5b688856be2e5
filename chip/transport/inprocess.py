"""An in-process reader with a card feeder: the embedded default of an encoder head.

It behaves like a PC/SC reader in front of a feeder: ``connect`` takes the next blank from the
feeder, ``reconnect`` resets the card, ``disconnect(eject=True)`` hands the card to the output and
the slot is empty until the next ``connect``.
"""

from __future__ import annotations

from collections.abc import Callable

from chip.emulator.card import ChipOS
from chip.errors import CardRemovedError

__all__ = ["InProcessReader"]


class InProcessReader:
    def __init__(
        self,
        name: str,
        feeder: Callable[[], ChipOS | None],
        *,
        output: Callable[[ChipOS], None] | None = None,
    ) -> None:
        self.name = name
        self._feeder = feeder
        self._output = output
        self.card: ChipOS | None = None

    def __repr__(self) -> str:
        return f"InProcessReader({self.name!r})"

    def connect(self) -> bytes:
        if self.card is None:
            self.card = self._feeder()
        if self.card is None:
            raise CardRemovedError("no blank in the feeder", reader=self.name)
        return self.card.power_on()

    def reconnect(self, reset: bool = True) -> bytes:
        if self.card is None:
            raise CardRemovedError("no card in the reader", reader=self.name)
        return self.card.power_on()

    def transmit(self, apdu: bytes) -> bytes:
        if self.card is None:
            raise CardRemovedError("no card in the reader", reader=self.name)
        return self.card.transmit(apdu)

    def disconnect(self, eject: bool = False) -> None:
        card, self.card = self.card, None
        if card is not None and eject and self._output is not None:
            self._output(card)
        elif card is not None and not eject:
            self.card = card
