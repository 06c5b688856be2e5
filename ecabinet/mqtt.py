"""The MQTT transport: one small wrapper over aiomqtt that both the cabinet emulator and the
controller use, so the sans-I/O protocol (:mod:`ecabinet.protocol`) meets one kind of link.

A link only moves bytes: it never parses or trusts a payload (every message is MAC'd end to end,
docs/ecabinet-protocol.md *Security*).  What it adds over aiomqtt:

- one place that reads a broker address (``mqtt://host:port`` or ``mqtts://host:port``) and the
  credentials, and never shows a password in a repr or an error;
- MQTT 5 when the broker speaks it (Mosquitto), with the Response Topic and Correlation Data
  properties on commands (MQTT 5.0 §3.3.2.3.5-6); MQTT 3.1.1 for brokers that do not (amqtt), where
  the payload's own copies serve (the protocol's 3.1.1 fallback);
- aiomqtt's errors turned into :class:`~ecabinet.errors.LinkError`, the one thing a supervisor
  catches to reconnect.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ecabinet.errors import LinkError
from ecabinet.protocol import Outgoing, Publish

__all__ = ["BrokerAddress", "Inbound", "MqttLink", "connect"]

MqttVersion = Literal["5", "3.1.1"]


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where a broker is and how to log in.  ``password`` is kept out of the repr."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    version: MqttVersion = "5"

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        version: MqttVersion | None = None,
    ) -> BrokerAddress:
        """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…`` (TLS, default port 8883).

        Explicit keyword arguments win over what the URL says.  A password in the URL is accepted
        for tests; deployments pass it apart (it would otherwise sit in a process list).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise LinkError(
                f"broker URL must start with mqtt:// or mqtts://, not {parts.scheme!r}://"
            )
        if not parts.hostname:
            raise LinkError("broker URL has no host")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port
        except ValueError as exc:
            raise LinkError("broker URL has a bad port") from exc
        if port == 0:  # urlsplit accepts it; nothing listens there
            raise LinkError("broker URL has a bad port")
        if port is None:
            port = 8883 if tls else 1883
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls,
            username=username if username is not None else _unquoted(parts.username),
            password=password if password is not None else _unquoted(parts.password),
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            version=version or "5",
        )

    def url(self) -> str:
        """The address without credentials (safe to log)."""
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal (RFC 3986 §3.2.2)
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.sslsocket_class = _ClosingSSLSocket
        if self.cert_file is not None:
            context.load_cert_chain(
                str(self.cert_file), str(self.key_file) if self.key_file is not None else None
            )
        return context


class _ClosingSSLSocket(ssl.SSLSocket):
    """paho-mqtt 2.2 leaves the socket open when the TLS handshake fails (bad certificate, wrong
    host): close it here, or every refused reconnect leaks a file descriptor until GC."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _unquoted(value: str | None) -> str | None:
    return unquote(value) if value is not None else None


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message as received: the topic and the raw payload (not yet verified)."""

    topic: str
    payload: bytes
    retain: bool

    def __repr__(self) -> str:
        return f"Inbound({self.topic!r}, {len(self.payload)} bytes, retain={self.retain})"


class MqttLink:
    """A connected client.  Obtain one with :func:`connect`."""

    def __init__(self, client: aiomqtt.Client, address: BrokerAddress) -> None:
        self._client = client
        self._address = address

    def __repr__(self) -> str:
        return f"MqttLink({self._address.url()}, MQTT {self._address.version})"

    @property
    def version(self) -> MqttVersion:
        return self._address.version

    async def subscribe(self, topics: Sequence[tuple[str, int]]) -> None:
        try:
            for topic, qos in topics:
                await self._client.subscribe(topic, qos=qos)
        except aiomqtt.MqttError as exc:
            raise LinkError(f"subscribe failed: {_reason(exc)}") from exc

    async def publish(self, message: Publish | Outgoing) -> None:
        """Publish an action of the cabinet side or a command of the controller side."""
        properties: Properties | None = None
        if isinstance(message, Outgoing) and self._address.version == "5":
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = message.response_topic
            properties.CorrelationData = message.correlation_data
        try:
            await self._client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                properties=properties,
            )
        except aiomqtt.MqttError as exc:
            raise LinkError(f"publish failed: {_reason(exc)}") from exc

    async def messages(self) -> AsyncIterator[Inbound]:
        """Every message on the subscriptions, until the connection drops (then LinkError)."""
        try:
            async for message in self._client.messages:
                payload = message.payload
                if not isinstance(payload, (bytes, bytearray)):
                    payload = b"" if payload is None else str(payload).encode("utf-8")
                yield Inbound(message.topic.value, bytes(payload), bool(message.retain))
        except aiomqtt.MqttError as exc:
            raise LinkError(f"connection lost: {_reason(exc)}") from exc


def _reason(exc: aiomqtt.MqttError) -> str:
    # aiomqtt's messages carry return codes and reasons, never credentials; keep them short.
    text = str(exc) or type(exc).__name__
    return text[:200]


@asynccontextmanager
async def connect(
    address: BrokerAddress,
    *,
    client_id: str,
    will: Publish | None = None,
    keepalive: int = 10,
    timeout: float = 5.0,
) -> AsyncIterator[MqttLink]:
    """Connect (with ``will`` as the last will), yield the link, disconnect cleanly on exit.

    A clean session every time: commands are never left queued at the broker for a cabinet that
    is away, because a command that waited there could open a door long after the officer left;
    the controller re-issues what it still wants after reconciliation instead.
    """
    protocol = (
        aiomqtt.ProtocolVersion.V5 if address.version == "5" else aiomqtt.ProtocolVersion.V311
    )
    v5 = protocol is aiomqtt.ProtocolVersion.V5
    client = aiomqtt.Client(
        address.host,
        address.port,
        username=address.username,
        password=address.password,
        identifier=client_id,
        protocol=protocol,
        will=(
            aiomqtt.Will(will.topic, will.payload, qos=will.qos, retain=will.retain)
            if will is not None
            else None
        ),
        tls_context=address.tls_context(),
        # Commands and acks are small packets each waiting on the other side's answer: with
        # Nagle on, delayed ACKs hold each one back ~40 ms (a round trip measured 88 ms against
        # Mosquitto without this, 2 ms with it; the broker sets it too, set_tcp_nodelay).
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        keepalive=keepalive,
        timeout=timeout,
        clean_session=None if v5 else True,
        clean_start=True if v5 else 3,  # 3 = paho's MQTT_CLEAN_START_FIRST_ONLY default (V5 only)
    )
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise LinkError(f"cannot connect to {address.url()}: {_reason(exc)}") from exc
    except OSError as exc:
        raise LinkError(f"cannot connect to {address.url()}: {exc.strerror or exc}") from exc
    try:
        yield MqttLink(client, address)
    finally:
        # If the connection is gone already there is nothing left to close cleanly.
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)
