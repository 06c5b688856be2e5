"""The durable store of the card life cycle (DESIGN §3): open one by URL.

``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` (the SQLAlchemy spelling: the
path is what follows the third slash) open the embedded SQLite store; ``postgresql://`` is the
planned multi-host store and is refused until it exists.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from personaliser.store.base import (
    ApplicationRecord,
    Attempt,
    Batch,
    BlankRecord,
    Event,
    IntakeCounts,
    SpoilEntry,
    StockCounts,
    Store,
    TransitionRequest,
    TransitionResult,
)
from personaliser.store.crypto import PersonalDataCipher
from personaliser.store.sqlite import SqliteStore

__all__ = [
    "ApplicationRecord",
    "Attempt",
    "Batch",
    "BlankRecord",
    "Event",
    "IntakeCounts",
    "PersonalDataCipher",
    "SpoilEntry",
    "SqliteStore",
    "StockCounts",
    "Store",
    "TransitionRequest",
    "TransitionResult",
    "open",
]


def open(url: str, *, cipher: PersonalDataCipher, **options: Any) -> Store:
    """The store at ``url``; ``options`` go to the implementation (clock, actor, purge_at …)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix) or parts.query:
            raise ValueError("a SQLite store URL is sqlite:///relative/path or sqlite:////abs/path")
        path = unquote(url[len(prefix) :])
        if path == ":memory:":
            # Each thread has its own connection, and an in-memory database is private to one.
            raise ValueError("the store needs a file (in-memory SQLite is one per connection)")
        return SqliteStore(path, cipher=cipher, **options)
    if parts.scheme in ("postgresql", "postgres"):
        raise ValueError("the PostgreSQL store is planned (DESIGN §7) but not implemented yet")
    raise ValueError(f"unsupported store URL scheme {parts.scheme!r}")
