"""ecabinet.mqtt: the link's round trips on the embedded broker (amqtt, MQTT 3.1.1), the MQTT 5
properties of commands as a Mosquitto subscriber sees them, and BrokerAddress.parse."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import aiomqtt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ecabinet.broker import EmbeddedBroker, free_port
from ecabinet.errors import LinkError
from ecabinet.mosquitto import MosquittoBroker
from ecabinet.mqtt import BrokerAddress, connect
from ecabinet.protocol import Outgoing, Publish
from ecabinet.topics import Channel, subscription, topic
from tests.brokers import SITE, Inbox, held_connection, unique_id

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def pub(cabinet: str, channel: Channel, payload: bytes, *, retain: bool = False) -> Publish:
    return Publish(
        topic(SITE, cabinet, channel), payload, 0 if channel is Channel.HEARTBEAT else 1, retain
    )


def command(cabinet: str, payload: bytes) -> Outgoing:
    return Outgoing(
        cabinet=cabinet,
        topic=topic(SITE, cabinet, Channel.CMD),
        payload=payload,
        qos=1,
        retain=False,
        command_id=uuid.uuid4(),
        correlation_id=uuid.uuid4(),
        response_topic=topic(SITE, cabinet, Channel.ACK),
    )


# -- the embedded broker ------------------------------------------------------------------------


def test_round_trips_on_the_embedded_broker() -> None:
    async def scenario() -> None:
        async with EmbeddedBroker() as broker:
            address = broker.address
            assert address.version == "3.1.1" and not address.tls
            async with (
                connect(address, client_id="ctl") as ctl,
                Inbox(ctl) as to_controller,
                connect(address, client_id="C1") as cab,
                Inbox(cab) as to_cabinet,
            ):
                assert cab.version == "3.1.1"
                await ctl.subscribe(
                    [(subscription(SITE, c), 1) for c in (Channel.ACK, Channel.HEARTBEAT)]
                )
                await cab.subscribe([(topic(SITE, "C1", Channel.CMD), 1)])
                # A command under 3.1.1: no properties to set, the payload carries everything.
                await ctl.publish(command("C1", b'{"cmd":1}'))
                received = await to_cabinet.next()
                assert (received.topic, received.payload, received.retain) == (
                    topic(SITE, "C1", Channel.CMD),
                    b'{"cmd":1}',
                    False,
                )
                await cab.publish(pub("C1", Channel.ACK, b'{"ack":1}'))
                await cab.publish(pub("C1", Channel.HEARTBEAT, b"\x00\xffbinary"))
                first, second = await to_controller.next(), await to_controller.next()
                assert (first.topic, first.payload) == (
                    topic(SITE, "C1", Channel.ACK),
                    b'{"ack":1}',
                )
                assert second.payload == b"\x00\xffbinary"

    run(scenario())


def test_retained_messages_on_the_embedded_broker() -> None:
    async def scenario() -> None:
        async with EmbeddedBroker() as broker:
            async with connect(broker.address, client_id="C1") as cab:
                await cab.publish(pub("C1", Channel.INVENTORY, b"old", retain=True))
                await cab.publish(pub("C1", Channel.INVENTORY, b"new", retain=True))
                await cab.publish(pub("C1", Channel.EVT, b"not retained"))
            async with connect(broker.address, client_id="ctl") as ctl, Inbox(ctl) as inbox:
                await ctl.subscribe(
                    [(subscription(SITE, c), 1) for c in (Channel.INVENTORY, Channel.EVT)]
                )
                async with connect(broker.address, client_id="C1") as cab:
                    await cab.publish(pub("C1", Channel.EVT, b"sentinel"))
                before, _ = await inbox.until(lambda m: m.payload == b"sentinel")
            assert [(m.payload, m.retain) for m in before] == [(b"new", True)]

    run(scenario())


def test_the_will_on_an_abrupt_drop_from_the_embedded_broker() -> None:
    will = pub("C1", Channel.STATUS, b"offline-lost", retain=True)

    async def scenario() -> None:
        async with EmbeddedBroker() as broker:
            async with connect(broker.address, client_id="ctl") as ctl, Inbox(ctl) as inbox:
                await ctl.subscribe([(subscription(SITE, Channel.STATUS), 1)])
                async with held_connection(broker.address, client_id="C1", will=will) as process:
                    process.kill()
                    message = await inbox.next()
                assert (message.topic, message.payload) == (will.topic, will.payload)
            async with connect(broker.address, client_id="late") as ctl, Inbox(ctl) as inbox:
                await ctl.subscribe([(subscription(SITE, Channel.STATUS), 1)])
                message = await inbox.next()
                assert (message.payload, message.retain) == (b"offline-lost", True)

    run(scenario())


def test_link_errors_are_link_errors() -> None:
    nobody = BrokerAddress("127.0.0.1", free_port(), version="3.1.1")

    async def scenario() -> None:
        with pytest.raises(LinkError, match=r"cannot connect to mqtt://127\.0\.0\.1"):
            async with connect(nobody, client_id="x", timeout=1.0):
                pass
        broker = EmbeddedBroker()
        await broker.start()
        try:
            async with connect(broker.address, client_id="x") as link, Inbox(link) as inbox:
                await link.subscribe([("perso/v1/S1/+/ack", 1)])
                await broker.stop()
                with pytest.raises(LinkError):
                    await inbox.next()
                with pytest.raises(LinkError):
                    await link.publish(pub("C1", Channel.ACK, b"late"))
        finally:
            await broker.stop()

    run(scenario())


# -- MQTT 5 properties at a Mosquitto subscriber ------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_command_properties_reach_a_mosquitto_subscriber(
    mosquitto: MosquittoBroker, version: str
) -> None:
    cab = unique_id()
    cabinet = mosquitto.add_cabinet(cab)
    controller = dataclasses.replace(mosquitto.add_controller(), version=version)  # type: ignore[arg-type]
    out = command(cab, b'{"type":"light"}')

    async def scenario() -> aiomqtt.Message:
        # A plain aiomqtt client, to read what MqttLink does not expose: the PUBLISH properties.
        async with aiomqtt.Client(
            cabinet.host,
            cabinet.port,
            username=cabinet.username,
            password=cabinet.password,
            identifier=cab,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=cabinet.tls_context(),
        ) as raw:
            await raw.subscribe(out.topic, qos=1)
            async with connect(controller, client_id=unique_id("ctl")) as ctl:
                await ctl.publish(out)
            return await asyncio.wait_for(anext(raw.messages), 5.0)

    message = run(scenario())
    assert message.payload == b'{"type":"light"}'
    properties = message.properties
    if version == "5":
        # MQTT 5.0 §3.3.2.3.5-6, docs/ecabinet-protocol.md *Request/response*.
        assert properties is not None
        assert getattr(properties, "ResponseTopic") == topic(SITE, cab, Channel.ACK)  # noqa: B009
        assert getattr(properties, "CorrelationData") == out.correlation_id.bytes  # noqa: B009
    else:
        # Published under 3.1.1 the command has no properties; the payload's copies serve.
        assert properties is None or not hasattr(properties, "ResponseTopic")


# -- BrokerAddress ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker.example", "broker.example", 1883, False),
        ("mqtts://broker.example", "broker.example", 8883, True),
        ("mqtt://10.0.0.5:1884", "10.0.0.5", 1884, False),
        ("mqtts://Broker.Example:443", "broker.example", 443, True),
        ("mqtts://[::1]:8884", "::1", 8884, True),
    ],
)
def test_parse(url: str, host: str, port: int, tls: bool) -> None:
    address = BrokerAddress.parse(url)
    assert (address.host, address.port, address.tls) == (host, port, tls)
    assert (address.username, address.password, address.version) == (None, None, "5")
    assert BrokerAddress.parse(address.url()) == address


def test_parse_credentials_and_overrides() -> None:
    address = BrokerAddress.parse("mqtts://cab%2F1%40x:p%3Aw%2Fd%40%25@h:9000")
    assert (address.username, address.password) == ("cab/1@x", "p:w/d@%")
    assert "p:w/d@%" not in repr(address) and "p%3A" not in repr(address)
    assert address.url() == "mqtts://h:9000"
    ca = Path("/etc/ca.pem")
    explicit = BrokerAddress.parse(
        "mqtt://u:p@h", username="U", password="P", ca_file=ca, version="3.1.1"
    )
    assert (explicit.username, explicit.password, explicit.ca_file, explicit.version) == (
        "U",
        "P",
        ca,
        "3.1.1",
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://h",
        "tcp://h:1883",
        "h:1883",
        "mqtt://",
        "mqtt://h:99999",
        "mqtt://h:port",
        "mqtt://h:0",
    ],
)
def test_parse_refuses(url: str) -> None:
    with pytest.raises(LinkError):
        BrokerAddress.parse(url)


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
hosts = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


@given(host=hosts, port=st.integers(1, 65535), tls=st.booleans())
def test_parse_round_trips_url(host: str, port: int, tls: bool) -> None:
    address = BrokerAddress(host, port, tls=tls)
    assert BrokerAddress.parse(address.url()) == address
    scheme = "mqtts" if tls else "mqtt"
    bracketed = f"[{host}]" if ":" in host else host
    assert BrokerAddress.parse(f"{scheme}://{bracketed}") == dataclasses.replace(
        address, port=8883 if tls else 1883
    )


@given(
    host=hosts,
    port=st.integers(1, 65535),
    username=st.text(min_size=1, max_size=20),
    password=st.text(min_size=6, max_size=40),
)
def test_parse_unquotes_credentials_and_never_shows_the_password(
    host: str, port: int, username: str, password: str
) -> None:
    bracketed = f"[{host}]" if ":" in host else host
    url = f"mqtts://{quote(username, safe='')}:{quote(password, safe='')}@{bracketed}:{port}"
    address = BrokerAddress.parse(url)
    assert (address.host, address.port, address.username, address.password) == (
        host,
        port,
        username,
        password,
    )
    shown = repr(dataclasses.replace(address, password=None))
    assume(password not in shown and password not in address.url())
    assert password not in repr(address)
    assert password not in address.url()
