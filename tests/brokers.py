"""MQTT brokers and clients for the tests: Mosquitto instances, a message inbox with timeouts, and
a client in a subprocess that can be killed to drop its connection abruptly (last-will tests).

The pytest fixtures ``mosquitto`` (one broker for the session) and ``fresh_mosquitto`` (one per
test, for tests that kill or restart it or leave retained messages) are in tests/conftest.py and
built from :func:`start_mosquitto`.  Tests sharing the session broker use their own cabinet ids
(:func:`unique_id`) so that their messages never meet.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ecabinet.mosquitto import MosquittoBroker, MosquittoError
from ecabinet.mqtt import BrokerAddress, Inbound, MqttLink, connect
from ecabinet.protocol import Publish

__all__ = [
    "SITE",
    "Inbox",
    "fail_message",
    "held_connection",
    "start_mosquitto",
    "unique_id",
]

#: The site of the fixtures' brokers.
SITE = "S1"

REPO = Path(__file__).resolve().parent.parent


def start_mosquitto(workdir: Path, *, site: str = SITE) -> MosquittoBroker:
    """A started broker on a free loopback port; raises MosquittoError (the fixtures fail on it)."""
    broker = MosquittoBroker(workdir, site=site)
    broker.start()
    return broker


def unique_id(prefix: str = "C") -> str:
    """A cabinet (or client) id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def fail_message(exc: MosquittoError) -> str:
    return f"cannot start mosquitto for the tests: {exc}"


class Inbox:
    """The messages of one link, awaited with a timeout (``async with Inbox(link) as inbox``)."""

    def __init__(self, link: MqttLink) -> None:
        self._messages = link.messages()

    async def __aenter__(self) -> Inbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._messages.aclose()  # type: ignore[attr-defined]

    async def next(self, timeout: float = 5.0) -> Inbound:
        return await asyncio.wait_for(anext(self._messages), timeout)

    async def until(
        self, match: Callable[[Inbound], bool], timeout: float = 5.0
    ) -> tuple[list[Inbound], Inbound]:
        """Every message before the first that ``match``es, and that one.

        The sentinel pattern: publish what must *not* arrive, then something that must, through
        the same broker; once the sentinel is here, anything sent before it would have been too
        (Mosquitto delivers one publisher's messages in order), so no sleep is needed.
        """
        before: list[Inbound] = []

        async def collect() -> Inbound:
            async for message in self._messages:
                if match(message):
                    return message
                before.append(message)
            raise AssertionError("the link closed before the expected message")

        found = await asyncio.wait_for(collect(), timeout)
        return before, found


# -- a client in another process --------------------------------------------------------------


@asynccontextmanager
async def held_connection(
    address: BrokerAddress, *, client_id: str, will: Publish
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A subprocess connected through :func:`ecabinet.mqtt.connect` with ``will`` as last will.

    Yields once the broker has accepted the connection.  Kill the process to drop the connection
    the way a power cut does: the kernel closes the socket, no DISCONNECT is sent, and the broker
    must publish the will (MQTT 5.0 §3.1.2.5).  The credentials go over stdin, not argv.
    """
    spec = {
        "address": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(address).items()},
        "client_id": client_id,
        "will": {
            "topic": will.topic,
            "payload": will.payload.hex(),
            "qos": will.qos,
            "retain": will.retain,
        },
    }
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.brokers",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(spec).encode() + b"\n")
        await process.stdin.drain()
        process.stdin.close()
        line = await asyncio.wait_for(process.stdout.readline(), 15.0)
        if line.strip() != b"connected":
            raise AssertionError(f"the held client did not connect: {line!r}")
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _hold(spec: dict[str, Any]) -> None:
    fields = dict(spec["address"])
    for key in ("ca_file", "cert_file", "key_file"):
        if fields.get(key) is not None:
            fields[key] = Path(fields[key])
    address = BrokerAddress(**fields)
    w = spec["will"]
    will = Publish(w["topic"], bytes.fromhex(w["payload"]), w["qos"], w["retain"])
    async with connect(address, client_id=spec["client_id"], will=will):
        print("connected", flush=True)
        await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(_hold(json.loads(sys.stdin.readline())))
