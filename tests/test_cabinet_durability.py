"""The cabinet store's durability barrier (ecabinet/store.py, ``sync="barrier"``).

- ``sync="full"`` syncs every commit on the committing thread: every commit is durable at once;
- ``sync="barrier"`` commits with synchronous=NORMAL and counts commits; ``make_durable`` fsyncs
  the WAL (and the database file) and covers every commit made before it was called; with
  nothing new to cover it does no I/O;
- the controller's ``durable()`` lets many concurrent flows share one fsync, runs it off the event
  loop, and does not return before the commits made before the call are covered;
- an unknown sync mode is refused.
"""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ecabinet.audit import AuditWriter
from ecabinet.controller import SiteController
from ecabinet.mqtt import BrokerAddress
from ecabinet.security import SiteKey
from ecabinet.store import CabinetStore, NewCard

DAY = date(2025, 3, 10)


def card(n: int) -> NewCard:
    return NewCard(f"APP{n:04d}", f"SER{n:04d}", "OFF1", DAY)


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    calls: list[tuple[str, int]] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append((threading.current_thread().name, fd))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_full_mode_counts_every_commit_durable(tmp_path: Path) -> None:
    with CabinetStore(tmp_path / "c.db") as store:
        store.register_cards([card(1)])
        assert store.commit_count >= 1 and store.durable_count == store.commit_count


def test_barrier_mode_covers_the_commits_made_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with CabinetStore(tmp_path / "c.db", sync="barrier") as store:
        conn = store._conn()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        base = store.durable_count
        store.register_cards([card(1)])
        store.register_cards([card(2)])
        assert store.commit_count >= base + 2 > store.durable_count
        calls = count_fsyncs(monkeypatch)
        store.make_durable()
        assert store.durable_count == store.commit_count
        assert len(calls) == 2  # the WAL and the database file
        store.make_durable()  # nothing new: no I/O
        assert len(calls) == 2


def test_an_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CabinetStore(tmp_path / "c.db", sync="sometimes")  # type: ignore[arg-type]


def test_concurrent_flows_share_one_fsync_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        CabinetStore(tmp_path / "c.db", sync="barrier") as store,
        AuditWriter(tmp_path / "audit.log", key=bytes(32)) as audit,
    ):
        controller = SiteController(
            BrokerAddress("127.0.0.1", 1), SiteKey("S1", bytes(32)), store, audit
        )
        store.register_cards([card(n) for n in range(5)])
        calls = count_fsyncs(monkeypatch)
        loop_thread = threading.current_thread().name

        async def main() -> None:
            await asyncio.gather(*(controller.durable() for _ in range(20)))

        asyncio.run(main())
        assert store.durable_count == store.commit_count
        assert 1 <= len(calls) <= 4  # one barrier (WAL + database file), not twenty
        assert all(name != loop_thread for name, _ in calls)


def test_commands_leave_in_the_order_they_were_made_whatever_the_barriers_take(
    tmp_path: Path,
) -> None:
    """A cabinet refuses a counter lower than one it has seen, so commands must reach the client
    in the order their counters were drawn, even when a later caller's barrier ends first."""
    with (
        CabinetStore(tmp_path / "c.db", sync="barrier") as store,
        AuditWriter(tmp_path / "audit.log", key=bytes(32)) as audit,
    ):
        controller = SiteController(
            BrokerAddress("127.0.0.1", 1), SiteKey("S1", bytes(32)), store, audit
        )
        sent: list[int] = []
        waits = iter([0.03, 0.0, 0.02, 0.0, 0.01, 0.0])  # the first callers wait longest

        async def durable() -> None:
            await asyncio.sleep(next(waits))

        class Link:
            async def publish(self, out: Any) -> None:
                sent.append(out)  # what the client was handed, in order (paho queues in order)
                await asyncio.sleep(0.001)

        controller.durable = durable  # type: ignore[method-assign]
        controller._link = Link()  # type: ignore[assignment]

        async def main() -> None:
            await asyncio.gather(*(controller._publish(n) for n in range(6)))  # type: ignore[arg-type]

        asyncio.run(main())
        assert sent == list(range(6))
