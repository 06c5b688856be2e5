"""ecabinet.mosquitto against a real Mosquitto 2.0, through ecabinet.mqtt.connect: TLS, passwords,
the ACLs of docs/ecabinet-protocol.md, retained messages, last wills, kill and restart, reload."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ecabinet import mosquitto as mosquitto_module
from ecabinet.errors import CabinetError, LinkError
from ecabinet.mosquitto import (
    CONTROLLER_USER,
    BrokerStartError,
    MosquittoBroker,
    MosquittoError,
    acl_text,
    hash_password,
    make_test_pki,
    verify_password,
)
from ecabinet.mqtt import BrokerAddress, connect
from ecabinet.protocol import Publish
from ecabinet.topics import Channel, subscription, topic
from tests.brokers import SITE, Inbox, held_connection, unique_id

pytestmark = pytest.mark.integration

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def pub(
    site: str, cabinet: str, channel: Channel, payload: bytes, *, retain: bool = False
) -> Publish:
    qos = 0 if channel is Channel.HEARTBEAT else 1
    return Publish(topic(site, cabinet, channel), payload, qos, retain)


# -- TLS and credentials ------------------------------------------------------------------------


def test_tls_connect_with_the_ca_and_a_round_trip(mosquitto: MosquittoBroker) -> None:
    cab = unique_id()
    controller = mosquitto.add_controller()
    cabinet = mosquitto.add_cabinet(cab)
    assert controller.tls and controller.ca_file is not None and controller.version == "5"

    async def scenario() -> None:
        async with connect(controller, client_id=unique_id("ctl")) as ctl, Inbox(ctl) as inbox:
            await ctl.subscribe([(subscription(SITE, Channel.ACK), 1)])
            # By host name too: the server certificate names localhost as well as 127.0.0.1.
            by_name = dataclasses.replace(cabinet, host="localhost")
            async with connect(by_name, client_id=cab) as link:
                await link.publish(pub(SITE, cab, Channel.ACK, b"ack-1"))
            message = await inbox.next()
            assert (message.topic, message.payload) == (topic(SITE, cab, Channel.ACK), b"ack-1")

    run(scenario())


def test_plain_connection_to_the_tls_listener_is_refused(mosquitto: MosquittoBroker) -> None:
    plain = dataclasses.replace(mosquitto.add_controller(), tls=False, ca_file=None)

    async def scenario() -> None:
        with pytest.raises(LinkError) as caught:
            # aiomqtt waits for a CONNACK that never comes, so this takes the whole timeout.
            async with connect(plain, client_id=unique_id("plain"), timeout=1.0):
                pass
        assert plain.password is not None and plain.password not in str(caught.value)

    run(scenario())


def test_a_broker_signed_by_another_ca_is_refused(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    other = make_test_pki(tmp_path, "127.0.0.1")
    address = dataclasses.replace(mosquitto.add_controller(), ca_file=other.ca_cert)

    async def scenario() -> None:
        with pytest.raises(LinkError, match=r"(?i)certificate"):
            async with connect(address, client_id=unique_id("ca"), timeout=2.0):
                pass

    run(scenario())


@pytest.mark.parametrize("case", ["wrong password", "unknown user", "anonymous"])
def test_bad_credentials_are_refused(mosquitto: MosquittoBroker, case: str) -> None:
    good = mosquitto.add_cabinet(unique_id())
    bad = {
        "wrong password": dataclasses.replace(good, password="not-" + (good.password or "")),
        "unknown user": dataclasses.replace(good, username=unique_id("nobody")),
        "anonymous": dataclasses.replace(good, username=None, password=None),
    }[case]

    async def scenario() -> None:
        with pytest.raises(LinkError) as caught:
            async with connect(bad, client_id=unique_id("bad"), timeout=2.0):
                pass
        for secret in (good.password, bad.password):
            assert secret is None or secret not in str(caught.value)

    run(scenario())


# -- ACLs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_a_cabinet_never_receives_another_cabinets_commands(
    mosquitto: MosquittoBroker, version: str
) -> None:
    one, two = unique_id(), unique_id()
    controller = mosquitto.add_controller()
    addresses = mosquitto.add_cabinets([one, two])
    first = dataclasses.replace(addresses[one], version=version)  # type: ignore[arg-type]
    second = dataclasses.replace(addresses[two], version=version)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with (
            connect(controller, client_id=unique_id("ctl")) as ctl,
            connect(first, client_id=one) as link_one,
            connect(second, client_id=two) as link_two,
            Inbox(link_one) as inbox_one,
            Inbox(link_two) as inbox_two,
        ):
            # Mosquitto 2.0.11 grants the subscription (SUBACK QoS 1) and filters on delivery.
            await link_one.subscribe([(topic(SITE, two, Channel.CMD), 1)])
            await link_one.subscribe([(subscription(SITE, Channel.CMD), 1)])
            await link_one.subscribe([(topic(SITE, one, Channel.CMD), 1)])
            await link_two.subscribe([(topic(SITE, two, Channel.CMD), 1)])
            await ctl.publish(pub(SITE, two, Channel.CMD, b"for-two"))
            await ctl.publish(pub(SITE, one, Channel.CMD, b"for-one"))
            # The positive control: the command did go out, to its own cabinet.
            assert (await inbox_two.next()).payload == b"for-two"
            before, sentinel = await inbox_one.until(lambda m: m.payload == b"for-one")
            assert before == []
            assert sentinel.topic == topic(SITE, one, Channel.CMD)

    run(scenario())


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_a_cabinet_cannot_publish_as_another_cabinet(
    mosquitto: MosquittoBroker, version: str
) -> None:
    one, two = unique_id(), unique_id()
    controller = mosquitto.add_controller()
    addresses = mosquitto.add_cabinets([one, two])
    first = dataclasses.replace(addresses[one], version=version)  # type: ignore[arg-type]

    async def scenario() -> None:
        async with (
            connect(controller, client_id=unique_id("ctl")) as ctl,
            Inbox(ctl) as inbox,
            connect(first, client_id=one) as link,
        ):
            await ctl.subscribe(
                [(subscription(SITE, c), 1) for c in Channel if c is not Channel.CMD]
            )
            # Mosquitto drops these.  Under MQTT 5 it answers the QoS 1 PUBLISH with PUBACK 0x87
            # (Not authorized), but aiomqtt 2.5 ignores PUBACK reason codes: publish() returns
            # normally.  What is observable, and what matters, is that nobody receives them.
            await link.publish(pub(SITE, two, Channel.ACK, b"forged-ack"))
            await link.publish(pub(SITE, two, Channel.STATUS, b"forged-status", retain=True))
            # ... nor may a cabinet send commands, to itself or to another.
            await link.publish(pub(SITE, two, Channel.CMD, b"forged-cmd"))
            await link.publish(pub(SITE, one, Channel.ACK, b"sentinel"))
            before, sentinel = await inbox.until(lambda m: m.payload == b"sentinel")
            assert before == []
            assert sentinel.topic == topic(SITE, one, Channel.ACK)

        # Nothing was retained on the forged status either: a late subscriber gets nothing
        # before the sentinel it publishes itself.
        async with (
            connect(controller, client_id=unique_id("ctl")) as ctl,
            Inbox(ctl) as inbox,
            connect(addresses[two], client_id=two) as link_two,
        ):
            await ctl.subscribe([(subscription(SITE, Channel.STATUS), 1)])
            await link_two.publish(pub(SITE, two, Channel.STATUS, b"", retain=True))
            before, _ = await inbox.until(lambda m: m.topic == topic(SITE, two, Channel.STATUS))
            assert before == []

    run(scenario())


def test_a_cabinet_cannot_send_commands(mosquitto: MosquittoBroker) -> None:
    one, two = unique_id(), unique_id()
    controller = mosquitto.add_controller()
    addresses = mosquitto.add_cabinets([one, two])

    async def scenario() -> None:
        async with (
            connect(controller, client_id=unique_id("ctl")) as ctl,
            connect(addresses[one], client_id=one) as forger,
            connect(addresses[two], client_id=two) as victim,
            Inbox(victim) as inbox,
        ):
            await victim.subscribe([(topic(SITE, two, Channel.CMD), 1)])
            await forger.publish(pub(SITE, two, Channel.CMD, b"forged"))
            # publish() returned on the PUBACK, so the broker has handled (dropped) the forgery
            # before it reads the controller's sentinel.
            await ctl.publish(pub(SITE, two, Channel.CMD, b"sentinel"))
            before, _ = await inbox.until(lambda m: m.payload == b"sentinel")
            assert before == []

    run(scenario())


def test_an_oversized_packet_is_refused(mosquitto: MosquittoBroker) -> None:
    cab = unique_id()
    cabinet = mosquitto.add_cabinet(cab)
    controller = mosquitto.add_controller()
    assert mosquitto_module.MAX_PACKET_SIZE > 256 * 1024  # the protocol's largest payload fits

    async def scenario() -> None:
        async with connect(controller, client_id=unique_id("ctl")) as ctl, Inbox(ctl) as inbox:
            await ctl.subscribe([(subscription(SITE, Channel.EVT), 1)])
            async with connect(cabinet, client_id=cab, timeout=1.0) as link:
                # Mosquitto drops the connection without a PUBACK; aiomqtt waits out its timeout.
                with pytest.raises(LinkError):
                    await link.publish(pub(SITE, cab, Channel.EVT, b"x" * 300_000))
            async with connect(cabinet, client_id=cab) as link:
                await link.publish(pub(SITE, cab, Channel.EVT, b"y" * 256 * 1024))
                await link.publish(pub(SITE, cab, Channel.EVT, b"sentinel"))
            before, _ = await inbox.until(lambda m: m.payload == b"sentinel")
            assert [len(m.payload) for m in before] == [256 * 1024]

    run(scenario())
    assert "oversize packet" in mosquitto.log_tail(200)


def test_acl_text_is_what_the_protocol_document_says() -> None:
    text = acl_text("S1", ["C1", CONTROLLER_USER])
    blocks = {b.splitlines()[0]: b.splitlines()[1:] for b in text.split("\n\n")[1:]}
    assert blocks["user C1"] == [
        "topic read perso/v1/S1/C1/cmd",
        "topic write perso/v1/S1/C1/ack",
        "topic write perso/v1/S1/C1/evt",
        "topic write perso/v1/S1/C1/inventory",
        "topic write perso/v1/S1/C1/heartbeat",
        "topic write perso/v1/S1/C1/status",
    ]
    assert blocks[f"user {CONTROLLER_USER}"] == [
        "topic write perso/v1/S1/+/cmd",
        "topic read perso/v1/S1/+/ack",
        "topic read perso/v1/S1/+/evt",
        "topic read perso/v1/S1/+/inventory",
        "topic read perso/v1/S1/+/heartbeat",
        "topic read perso/v1/S1/+/status",
    ]
    with pytest.raises(ValueError):
        acl_text("S1", ["C1/#"])  # a user name that would widen a topic is refused
    with pytest.raises(ValueError):
        acl_text("S+", ["C1"])


# -- latency ------------------------------------------------------------------------------------


def test_small_messages_are_not_held_back_by_nagle(mosquitto: MosquittoBroker) -> None:
    """A command and its ack are small packets that each wait for the other side: with Nagle's
    algorithm on either end, Linux's delayed ACK (40 ms minimum) holds each one back.  Measured:
    88 ms a round trip with neither side setting TCP_NODELAY, 44 ms with only the broker, 2 ms
    with both.  The median stays under the 40 ms floor only if neither side waits."""
    cab = unique_id()
    cabinet = mosquitto.add_cabinet(cab)
    controller = mosquitto.add_controller()

    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        async with (
            connect(controller, client_id=unique_id("ctl")) as ctl,
            Inbox(ctl) as acks,
            connect(cabinet, client_id=cab) as link,
            Inbox(link) as commands,
        ):
            await ctl.subscribe([(subscription(SITE, Channel.ACK), 1)])
            await link.subscribe([(topic(SITE, cab, Channel.CMD), 1)])
            times = []
            for _ in range(25):
                start = loop.time()
                await ctl.publish(pub(SITE, cab, Channel.CMD, b"c" * 300))
                await commands.next()
                await link.publish(pub(SITE, cab, Channel.ACK, b"a" * 300))
                await acks.next()
                times.append(loop.time() - start)
            return sorted(times)

    times = run(scenario())
    assert times[len(times) // 2] < 0.035, (
        f"median round trip {times[len(times) // 2] * 1000:.1f} ms"
    )


# -- retained messages and wills ----------------------------------------------------------------


def test_a_late_controller_receives_the_retained_inventory(
    fresh_mosquitto: MosquittoBroker,
) -> None:
    cab = unique_id()
    cabinet = fresh_mosquitto.add_cabinet(cab)
    controller = fresh_mosquitto.add_controller()

    async def scenario() -> None:
        async with connect(cabinet, client_id=cab) as link:
            await link.publish(pub(SITE, cab, Channel.INVENTORY, b"inventory-1", retain=True))
            await link.publish(pub(SITE, cab, Channel.INVENTORY, b"inventory-2", retain=True))
            await link.publish(pub(SITE, cab, Channel.HEARTBEAT, b"beat"))  # not retained
        async with connect(controller, client_id="ctl") as ctl, Inbox(ctl) as inbox:
            await ctl.subscribe(
                [(subscription(SITE, c), 1) for c in Channel if c is not Channel.CMD]
            )
            message = await inbox.next()
            assert (message.topic, message.payload, message.retain) == (
                topic(SITE, cab, Channel.INVENTORY),
                b"inventory-2",
                True,
            )

    run(scenario())


def test_the_last_will_is_published_when_a_cabinet_drops(fresh_mosquitto: MosquittoBroker) -> None:
    cab = unique_id()
    cabinet = fresh_mosquitto.add_cabinet(cab)
    controller = fresh_mosquitto.add_controller()
    will = pub(SITE, cab, Channel.STATUS, b"offline-lost", retain=True)

    async def scenario() -> None:
        async with connect(controller, client_id="ctl") as ctl, Inbox(ctl) as inbox:
            await ctl.subscribe([(subscription(SITE, Channel.STATUS), 1)])
            async with held_connection(cabinet, client_id=cab, will=will) as process:
                process.kill()  # no DISCONNECT: the kernel just closes the socket
                message = await inbox.next()
            assert (message.topic, message.payload) == (will.topic, will.payload)
        # Retained: a controller that subscribes later still learns the cabinet is gone.
        async with connect(controller, client_id="ctl-late") as ctl, Inbox(ctl) as inbox:
            await ctl.subscribe([(subscription(SITE, Channel.STATUS), 1)])
            message = await inbox.next()
            assert (message.payload, message.retain) == (b"offline-lost", True)

    run(scenario())


def test_no_will_after_a_clean_disconnect(mosquitto: MosquittoBroker) -> None:
    cab = unique_id()
    cabinet = mosquitto.add_cabinet(cab)
    controller = mosquitto.add_controller()
    will = pub(SITE, cab, Channel.STATUS, b"offline-lost")  # not retained: the broker is shared

    async def scenario() -> None:
        async with connect(controller, client_id=unique_id("ctl")) as ctl, Inbox(ctl) as inbox:
            await ctl.subscribe([(subscription(SITE, c), 1) for c in (Channel.STATUS, Channel.ACK)])
            async with connect(cabinet, client_id=cab, will=will):
                pass  # a clean DISCONNECT discards the will (MQTT 5.0 §3.1.2.5)
            async with connect(cabinet, client_id=cab) as link:
                await link.publish(pub(SITE, cab, Channel.ACK, b"sentinel"))
            before, _ = await inbox.until(lambda m: m.payload == b"sentinel")
            assert before == []

    run(scenario())


# -- kill, restart, reload ----------------------------------------------------------------------


def test_kill_restart_and_reconnect(fresh_mosquitto: MosquittoBroker) -> None:
    broker = fresh_mosquitto
    cab = unique_id()
    cabinet = broker.add_cabinet(cab)
    controller = broker.add_controller()
    first_pid = broker.pid

    async def reconnecting_round_trip(payload: bytes) -> None:
        # What a supervisor does: connect, and on LinkError try again a little later.
        for _attempt in range(20):
            try:
                async with (
                    connect(controller, client_id="ctl", timeout=1.0) as ctl,
                    Inbox(ctl) as inbox,
                ):
                    await ctl.subscribe([(subscription(SITE, Channel.EVT), 1)])
                    async with connect(cabinet, client_id=cab, timeout=1.0) as link:
                        await link.publish(pub(SITE, cab, Channel.EVT, payload))
                    assert (await inbox.next()).payload == payload
                    return
            except LinkError:
                await asyncio.sleep(0.05)  # back-off between reconnects, not synchronisation
        raise AssertionError("never reconnected")

    async def scenario() -> None:
        async with connect(controller, client_id="ctl") as ctl, Inbox(ctl) as inbox:
            await ctl.subscribe([(subscription(SITE, Channel.EVT), 1)])
            broker.kill()
            assert not broker.running and broker.pid is None
            with pytest.raises(LinkError):
                await inbox.next()
        with pytest.raises(LinkError):
            async with connect(controller, client_id="ctl", timeout=1.0):
                pass
        broker.restart()
        assert broker.running and broker.pid not in (None, first_pid)
        await reconnecting_round_trip(b"after-restart")

    run(scenario())


def test_stop_and_start_keep_the_port_and_the_users(fresh_mosquitto: MosquittoBroker) -> None:
    broker = fresh_mosquitto
    cab = unique_id()
    cabinet = broker.add_cabinet(cab)
    port = broker.port
    broker.stop()
    assert not broker.running
    broker.start()
    assert broker.port == port

    async def scenario() -> None:
        async with connect(cabinet, client_id=cab):
            pass

    run(scenario())


def test_users_added_or_removed_while_running_take_effect(fresh_mosquitto: MosquittoBroker) -> None:
    broker = fresh_mosquitto
    controller = broker.add_controller()
    cab = unique_id()
    reloads = broker.log_tail(1000).count("Reloading config.")

    async def scenario() -> None:
        async with connect(controller, client_id="ctl") as ctl, Inbox(ctl) as inbox:
            await ctl.subscribe([(subscription(SITE, Channel.EVT), 1)])
            # Added after start: the password file and the ACL were reread (SIGHUP), so it can
            # log in and publish on its own topics at once.
            cabinet = broker.add_cabinet(cab)
            async with connect(cabinet, client_id=cab) as link, Inbox(link) as own:
                await link.publish(pub(SITE, cab, Channel.EVT, b"hello"))
                assert (await inbox.next()).payload == b"hello"
                # Removed while connected: the reload re-checks connected clients and drops it.
                broker.remove_cabinet(cab)
                with pytest.raises(LinkError):
                    await own.next()
            with pytest.raises(LinkError):
                async with connect(cabinet, client_id=cab, timeout=2.0):
                    pass

    run(scenario())
    assert broker.log_tail(1000).count("Reloading config.") == reloads + 2


# -- files, start-up failures, hygiene ----------------------------------------------------------


def test_written_config_and_files(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path, site="S9", port=18883)
    broker.add_controller()
    broker.add_cabinets(["C1", "C2"])
    conf = broker.write_config_only().read_text().splitlines()
    assert "allow_anonymous false" in conf
    assert "listener 18883 127.0.0.1" in conf
    assert "tls_version tlsv1.2" in conf
    assert f"password_file {broker.password_file}" in conf
    assert f"acl_file {broker.acl_file}" in conf
    assert f"log_dest file {broker.log_file}" in conf
    assert "persistence false" in conf
    assert [line for line in conf if line.startswith("listener")] == ["listener 18883 127.0.0.1"]
    for private in (broker.password_file, tmp_path / "server.key"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert not broker.running and broker.pid is None
    # Reopened over the same directory (a deployment adding a cabinet), the users remain.
    again = MosquittoBroker(tmp_path, site="S9", port=18883)
    assert again.users == {CONTROLLER_USER, "C1", "C2"}
    again.add_cabinet("C3")
    assert "user C1" in again.acl_file.read_text() and "user C3" in again.acl_file.read_text()


def test_persistence_goes_to_the_workdir(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path, site="S1", persistence=True)
    conf = broker.write_config_only().read_text().splitlines()
    assert "persistence true" in conf and f"persistence_location {tmp_path.resolve()}/" in conf


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can start mosquitto as another user")
def test_run_as_a_service_user() -> None:
    """Mosquitto 2.0 drops privileges before it opens its files: they are handed to that user."""
    service = pwd.getpwnam("mosquitto")  # created by the Debian package
    workdir = Path(tempfile.mkdtemp(prefix="mosquitto-run-as-"))  # pytest's tmp is root-only
    try:
        workdir.chmod(0o755)
        broker = MosquittoBroker(workdir, site="S1", run_as="mosquitto")
        cab = unique_id()
        cabinet = broker.add_cabinet(cab)
        with broker:
            status = Path(f"/proc/{broker.pid}/status").read_text()
            uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
            assert uid_line.split()[1:3] == [str(service.pw_uid)] * 2

            async def scenario() -> None:
                async with connect(cabinet, client_id=cab):
                    pass

            run(scenario())
            broker.add_cabinet(unique_id())  # rewritten files are handed over again on reload
            for path in (broker.password_file, broker.acl_file, workdir / "server.key"):
                assert path.stat().st_uid == service.pw_uid
    finally:
        shutil.rmtree(workdir)


def test_the_test_certificates(tmp_path: Path) -> None:
    files = make_test_pki(tmp_path, "10.1.2.3")
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ip_address("127.0.0.1"),
        ip_address("10.1.2.3"),
    }
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - datetime.now(UTC) < timedelta(days=8)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)


def test_password_hashes_agree_with_mosquitto_passwd(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(theirs), "alice", "s3cret"], check=True)
    encoded = theirs.read_text().strip().split(":", 1)[1]
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3creT", encoded)
    # Ours, with a fixed salt, is the same computation in the same layout.
    iterations, salt = int(encoded.split("$")[2]), base64.b64decode(encoded.split("$")[3])
    assert hash_password("s3cret", salt=salt, iterations=iterations) == encoded
    assert not verify_password("x", "plain")
    assert not verify_password("x", "$6$abc$def")


def test_a_port_in_use_fails_with_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = MosquittoBroker(tmp_path, site="S1", port=port)
        broker.add_cabinet("C1")
        with pytest.raises(BrokerStartError) as caught:
            broker.start()
    assert isinstance(caught.value, CabinetError)
    assert "Address already in use" in caught.value.log_tail
    assert "Address already in use" in str(caught.value)
    assert not broker.running


def test_a_chosen_port_taken_in_the_meantime_is_chosen_again(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path, site="S1")  # free_port() picked a port: racy by nature
    taken = broker.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with broker:
            assert broker.running and broker.port != taken
            assert broker.address.port == broker.port
            assert "Address already in use" in (tmp_path / "mosquitto.log").read_text()


def test_missing_mosquitto_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ecabinet.mosquitto.shutil.which", lambda _name: None)
    monkeypatch.setattr(mosquitto_module, "DEBIAN_BINARY", tmp_path / "no-such-binary")
    with pytest.raises(MosquittoError, match="install Debian package mosquitto"):
        MosquittoBroker(tmp_path, site="S1").start()


def test_no_password_in_reprs_logs_or_files(
    fresh_mosquitto: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = fresh_mosquitto
    addresses = [broker.add_controller(), broker.add_cabinet(unique_id())]
    broker.restart()

    async def scenario() -> None:
        for address in addresses:
            async with connect(address, client_id=unique_id("x")) as link:
                assert address.password is not None and address.password not in repr(link)

    run(scenario())
    broker.stop()  # the log is complete once the broker is gone
    texts = [repr(broker), caplog.text, broker.log_tail(1000), broker.password_file.read_text()]
    texts += [repr(a) for a in addresses] + [a.url() for a in addresses]
    for address in addresses:
        assert address.password is not None
        assert not any(address.password in text for text in texts)
    assert "(p5, c1, k10" in broker.log_tail(1000)  # the log did record the connections


def test_invalid_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        MosquittoBroker(tmp_path, site="S/1")
    broker = MosquittoBroker(tmp_path, site="S1")
    for bad in ("", "+", "#", "a/b", "_controller", "$SYS"):
        with pytest.raises(ValueError):
            broker.add_cabinet(bad)
    (tmp_path / "passwd").write_text("evil/#:$7$1$AAAA$AAAA\n")
    with pytest.raises(MosquittoError, match="line 1") as caught:
        MosquittoBroker(tmp_path, site="S1")
    assert "$7$" not in str(caught.value).replace("in $7$ format", "")


def test_address_is_the_base_address(mosquitto: MosquittoBroker) -> None:
    address = mosquitto.address
    assert address == BrokerAddress(
        host="127.0.0.1", port=mosquitto.port, tls=True, ca_file=mosquitto.ca_file, version="5"
    )
    assert address.username is None and address.password is None
    assert address.url() == f"mqtts://127.0.0.1:{mosquitto.port}"
