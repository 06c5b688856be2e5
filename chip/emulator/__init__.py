"""An ISO/IEC 7816-4 chip OS emulator carrying the ICAO 9303 eMRTD application.

``ChipImage`` is the non-volatile memory (saved to and loaded from an image file);
``ChipOS`` processes command APDUs against it and always answers with a status word.
"""

from chip.emulator.card import ChipOS, TimingModel
from chip.emulator.image import ChipImage, EFile, Lifecycle
from chip.emulator.meter import DEVICE_CPU, CpuMeter, Reading

__all__ = [
    "DEVICE_CPU",
    "ChipImage",
    "ChipOS",
    "CpuMeter",
    "EFile",
    "Lifecycle",
    "Reading",
    "TimingModel",
]
