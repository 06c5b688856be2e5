"""The one loader for known-answer vectors kept as data under ``tests/vectors/<source>/``.

Each vector file is TOML with a ``[source]`` table (document, edition, section, and where the
values were quoted from) and an array of ``[[vector]]`` tables.  Hex strings may contain spaces.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).parent / "vectors"


@dataclass(frozen=True)
class VectorFile:
    source: dict[str, Any]
    vectors: list[dict[str, Any]]

    def named(self, name: str) -> dict[str, Any]:
        for vector in self.vectors:
            if vector.get("name") == name:
                return vector
        raise KeyError(name)


def load(relative: str) -> VectorFile:
    """Load ``tests/vectors/<relative>``; the file must name its source document and section."""
    path = VECTORS / relative
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    source = data.get("source")
    if not isinstance(source, dict) or not {"document", "section"} <= source.keys():
        raise ValueError(f"{relative}: a vector file must name its source document and section")
    return VectorFile(source=source, vectors=list(data.get("vector", [])))


def h(text: str) -> bytes:
    """Hex (upper or lower case, spaces allowed) to bytes."""
    return bytes.fromhex("".join(text.split()))
