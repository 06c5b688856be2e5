"""The embedded MQTT broker of ``make demo``: amqtt, started in the same process on loopback.

DESIGN §7: the demo must run with nothing installed but the Python packages, so its broker is
amqtt (pure Python, MQTT 3.1.1).  It listens on 127.0.0.1 only and lets clients in without a
password: the demo's cabinets are in the same process, and every message is MAC'd end to end anyway
(docs/ecabinet-protocol.md *Security*), so the broker is not what keeps a door shut.  Real
deployments and the tests use Mosquitto with TLS, per-device passwords and ACLs
(:mod:`ecabinet.mosquitto`).
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import Any

from amqtt.broker import Broker

from ecabinet.errors import LinkError
from ecabinet.mqtt import BrokerAddress

__all__ = ["EmbeddedBroker", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the kernel's choice; racy only against other binders)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _no_delay(broker: Any) -> None:
    """TCP_NODELAY on amqtt's listening sockets (Linux passes it on to accepted connections).

    amqtt does not set it, and a small QoS 1 publish then waits for Nagle's algorithm against the
    peer's delayed ACK (~40 ms a hop, several hops per command); Mosquitto sets it (``set_tcp_nodelay``
    in its config).  Reached through amqtt's server objects, which have no public accessor.
    """
    for server in getattr(broker, "_servers", {}).values():
        instance = getattr(server, "instance", None)
        for sock in getattr(instance, "sockets", ()) or ():
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class EmbeddedBroker:
    """``async with EmbeddedBroker() as broker:`` — an amqtt broker on ``broker.address``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self._host = host
        self._port = port if port is not None else free_port(host)
        self._broker: Any = None

    @property
    def address(self) -> BrokerAddress:
        # amqtt speaks MQTT 3.1.1 only; the protocol's payload carries what MQTT 5 properties would.
        return BrokerAddress(host=self._host, port=self._port, version="3.1.1")

    def __repr__(self) -> str:
        return f"EmbeddedBroker({self.address.url()})"

    async def start(self) -> None:
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self._host}:{self._port}"}},
            # Listing the plugins replaces amqtt's defaults, which include a $SYS publisher
            # (psutil, deprecated) and packet loggers we do not want in the demo's output.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except Exception as exc:  # amqtt raises its own BrokerError or OSError
            self._broker = None
            raise LinkError(
                f"embedded broker failed to start on {self.address.url()}: {exc}"
            ) from exc
        _no_delay(self._broker)
        # amqtt 0.12 logs its own QoS 1 delivery hiccups (a packet id reused while in flight,
        # then a PUBACK timeout) as errors with tracebacks; the protocol above retries by itself
        # (same command id, recorded ack), so they are noise in the demo's output, not faults.
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)

    async def stop(self) -> None:
        if self._broker is not None:
            broker, self._broker = self._broker, None
            await broker.shutdown()

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
