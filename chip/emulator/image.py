"""The chip's non-volatile memory and its image file.

The image is a small JSON document (format ``perso-chip-image/1``): human-inspectable, diffable and
versioned.  It holds the chip's secrets (static SCP03 keys, BAC keys) exactly as the EEPROM of a real
chip would, so image files are written with mode 0600.
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from chip.errors import EncodingError
from chip.protocols.scp03 import StaticKeys

__all__ = ["FORMAT", "ChipImage", "EFile", "Lifecycle"]

FORMAT = "perso-chip-image/1"


class Lifecycle(enum.Enum):
    """Application life cycle, after GlobalPlatform Card Spec v2.3 §5.1 (card/application states)."""

    #: a blank: eMRTD application installed, empty; only SCP03 may write (GP OP_READY/SELECTABLE)
    BLANK = "blank"
    #: personalisation has started (files created) but the application is not locked
    PERSONALISING = "personalising"
    #: locked after personalisation (GP SECURED): nothing writable, reads need BAC
    SECURED = "secured"


@dataclass(slots=True)
class EFile:
    """A transparent elementary file (ISO/IEC 7816-4 §7.2)."""

    fid: int
    size: int
    sfi: int | None = None
    data: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        if not self.data:
            self.data = bytearray(self.size)

    def __repr__(self) -> str:
        return f"EFile(fid={self.fid:04X}, size={self.size}, sfi={self.sfi})"


@dataclass(slots=True)
class ChipImage:
    """Everything the chip keeps across power cycles."""

    serial: bytes
    scp03_keys: StaticKeys
    scp03_sequence_counter: int = 0
    lifecycle: Lifecycle = Lifecycle.BLANK
    bac_keys: tuple[bytes, bytes] | None = None
    app_files: dict[int, EFile] = field(default_factory=dict)
    mf_files: dict[int, EFile] = field(default_factory=dict)
    memory_limit: int = 128 * 1024

    def __repr__(self) -> str:
        return f"ChipImage(serial={self.serial.hex().upper()}, lifecycle={self.lifecycle.value})"

    @classmethod
    def blank(cls, serial: bytes, keys: StaticKeys) -> ChipImage:
        if len(serial) != 10:
            raise ValueError("chip serial (GP key diversification data) must be 10 bytes")
        return cls(serial=serial, scp03_keys=keys)

    @property
    def used_memory(self) -> int:
        return sum(f.size for f in self.app_files.values()) + sum(
            f.size for f in self.mf_files.values()
        )

    # -- image file ---------------------------------------------------------------------------

    def to_json(self) -> str:
        def files(table: dict[int, EFile]) -> list[dict[str, object]]:
            return [
                {"fid": f"{f.fid:04X}", "sfi": f.sfi, "size": f.size, "data": f.data.hex()}
                for f in table.values()
            ]

        doc = {
            "format": FORMAT,
            "serial": self.serial.hex().upper(),
            "lifecycle": self.lifecycle.value,
            "scp03": {
                "kvn": self.scp03_keys.kvn,
                "enc": self.scp03_keys.enc.hex(),
                "mac": self.scp03_keys.mac.hex(),
                "dek": self.scp03_keys.dek.hex(),
                "sequence_counter": self.scp03_sequence_counter,
            },
            "bac": None if self.bac_keys is None else [k.hex() for k in self.bac_keys],
            "memory_limit": self.memory_limit,
            "app_files": files(self.app_files),
            "mf_files": files(self.mf_files),
        }
        return json.dumps(doc, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ChipImage:
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT:
                raise EncodingError(f"not a {FORMAT} image", field="format")
            scp = doc["scp03"]
            keys = StaticKeys(
                enc=bytes.fromhex(scp["enc"]),
                mac=bytes.fromhex(scp["mac"]),
                dek=bytes.fromhex(scp["dek"]),
                kvn=int(scp["kvn"]),
            )

            def files(rows: list[dict[str, object]]) -> dict[int, EFile]:
                out: dict[int, EFile] = {}
                for row in rows:
                    fid = int(str(row["fid"]), 16)
                    sfi = row["sfi"]
                    data = bytearray.fromhex(str(row["data"]))
                    size = int(str(row["size"]))
                    if len(data) != size:
                        raise EncodingError("file data does not match its size", field="data")
                    out[fid] = EFile(fid, size, None if sfi is None else int(str(sfi)), data)
                return out

            bac = doc.get("bac")
            return cls(
                serial=bytes.fromhex(doc["serial"]),
                scp03_keys=keys,
                scp03_sequence_counter=int(scp["sequence_counter"]),
                lifecycle=Lifecycle(doc["lifecycle"]),
                bac_keys=None if bac is None else (bytes.fromhex(bac[0]), bytes.fromhex(bac[1])),
                app_files=files(doc["app_files"]),
                mf_files=files(doc["mf_files"]),
                memory_limit=int(doc.get("memory_limit", 128 * 1024)),
            )
        except EncodingError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise EncodingError(
                f"malformed chip image: {type(exc).__name__}", field="image"
            ) from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the image atomically with mode 0600 (it holds the chip's keys)."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=".chip-", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(self.to_json())
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ChipImage:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
