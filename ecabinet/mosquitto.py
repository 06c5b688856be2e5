"""A Mosquitto broker for one site: TLS, a password per device, ACLs that keep each cabinet to its
own topics.  Used by deployments (:meth:`MosquittoBroker.write_config_only`) and by the tests
(:meth:`MosquittoBroker.start` runs Debian's ``mosquitto`` on a loopback port).

What it writes into its work directory:

- ``mosquitto.conf``: one listener on ``host:port`` only, ``allow_anonymous false``, TLS 1.2 or
  newer, no persistence unless asked (then in the work directory), the log to a file there;
- ``ca.crt``, ``server.crt``, ``server.key``: a throwaway test CA and a server certificate for the
  host (EC P-256, a few days' validity) unless the caller brings its own :class:`TlsFiles`;
- ``passwd``: Mosquitto's ``$7$`` format (PBKDF2-HMAC-SHA512), written here rather than by
  ``mosquitto_passwd -b``, which would put each password on a command line;
- ``acl``: per user, what docs/ecabinet-protocol.md *Channels* says: the controller writes every
  cabinet's ``cmd`` and reads every cabinet's up channels; a cabinet (user name = cabinet id) reads
  only its own ``cmd`` and writes only its own up channels.

The broker is not what keeps a door shut (every message is MAC'd end to end); these are the
defences in depth the protocol document asks of a deployment.  Passwords never appear in a repr,
a log line or an error; an address that carries one hides it (:class:`~ecabinet.mqtt.BrokerAddress`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ecabinet.broker import free_port
from ecabinet.errors import BrokerStartError, MosquittoError
from ecabinet.mqtt import BrokerAddress
from ecabinet.topics import CHANNELS, TOPIC_PREFIX, Channel, Direction, check_id

__all__ = [
    "CONTROLLER_USER",
    "BrokerStartError",
    "MosquittoBroker",
    "MosquittoError",
    "TlsFiles",
    "acl_text",
    "hash_password",
    "make_test_pki",
    "mosquitto_binary",
    "verify_password",
]

log = logging.getLogger(__name__)

#: The controller's user name.  Cabinet ids start with a letter or digit (``topics.check_id``), so
#: this can never be a cabinet's user and a cabinet can never be given the controller's rights.
CONTROLLER_USER: Final = "_controller"

#: PBKDF2 rounds for the password file.  mosquitto_passwd 2.0 uses 101; the passwords here are
#: 256-bit random strings, so the rounds are not what protects them, and every CONNECT pays them.
PBKDF2_ITERATIONS: Final = 1000
_SALT_BYTES: Final = 12  # what mosquitto_passwd 2.0 uses

#: The protocol's payloads are at most 256 KiB (docs/ecabinet-protocol.md); allow for the topic and
#: properties, refuse anything much larger at the broker.
MAX_PACKET_SIZE: Final = 256 * 1024 + 4096

_START_TIMEOUT: Final = 5.0
_STOP_TIMEOUT: Final = 5.0
_POLL: Final = 0.02


#: Where Debian installs it; /usr/sbin is not on every user's PATH.
DEBIAN_BINARY: Final = Path("/usr/sbin/mosquitto")


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto")
    if found is None and DEBIAN_BINARY.exists():
        found = str(DEBIAN_BINARY)
    if found is None:
        raise MosquittoError("mosquitto not found: install Debian package mosquitto")
    return found


# -- password file -------------------------------------------------------------------------------


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """Mosquitto 2.0's ``$7$`` entry: ``$7$<iterations>$<b64 salt>$<b64 PBKDF2-HMAC-SHA512>``."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` entry (ours or ``mosquitto_passwd``'s)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode("utf-8"), salt, iterations, len(expected)
    )
    return hmac.compare_digest(digest, expected)


def _check_user(name: str) -> str:
    if name != CONTROLLER_USER:
        check_id(name, "cabinet")
    return name


def _read_password_file(path: Path) -> dict[str, str]:
    entries: dict[str, str] = {}
    if not path.exists():
        return entries
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, encoded = line.partition(":")
        try:
            if not sep or not encoded.startswith("$7$"):
                raise ValueError("not a $7$ entry")
            entries[_check_user(name)] = encoded
        except ValueError:
            # Say where, not what: the line holds a password hash.
            raise MosquittoError(
                f"{path}: line {number} is not a cabinet or controller entry in $7$ format"
            ) from None
    return entries


# -- ACL -----------------------------------------------------------------------------------------


def acl_text(site: str, users: Iterable[str]) -> str:
    """The ACL file for ``users`` (the controller and cabinet ids) of ``site``.

    One ``user`` block each rather than ``pattern … %u`` lines: a pattern applies to every user,
    the controller included, and the rights here differ by role.  ``topic read`` covers subscribe
    and delivery, ``topic write`` publish (retained or not); anything not granted is refused.
    """
    check_id(site, "site")
    up = [c for c, spec in CHANNELS.items() if spec.direction is Direction.UP]
    lines = [
        f"# Mosquitto ACL for site {site}, generated by ecabinet.mosquitto: regenerate, do not edit."
    ]
    for user in sorted(set(users)):
        _check_user(user)
        lines.append("")
        lines.append(f"user {user}")
        if user == CONTROLLER_USER:
            lines.append(f"topic write {TOPIC_PREFIX}/{site}/+/{Channel.CMD.value}")
            lines.extend(f"topic read {TOPIC_PREFIX}/{site}/+/{c.value}" for c in up)
        else:
            lines.append(f"topic read {TOPIC_PREFIX}/{site}/{user}/{Channel.CMD.value}")
            lines.extend(f"topic write {TOPIC_PREFIX}/{site}/{user}/{c.value}" for c in up)
    return "\n".join(lines) + "\n"


# -- test PKI ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for the listener: the CA clients trust, the server's chain and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def make_test_pki(directory: Path, host: str, *, days: int = 7) -> TlsFiles:
    """A throwaway CA and a server certificate for ``host``, 127.0.0.1 and localhost.

    EC P-256, short validity; the CA key is never written (nothing else is ever signed with it).
    Deployments bring certificates from their own CA instead.
    """
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ecabinet test broker CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    try:
        extra: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        extra = x509.DNSName(host)
    if extra not in names:
        names.append(extra)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    _write(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(
        files.server_key,
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    return files


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Write atomically (a reload never sees half a file), with ``mode`` from the start."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask
        os.replace(tmp, path)
    except OSError as exc:
        raise MosquittoError(f"cannot write {path}: {exc.strerror or exc}") from exc


# -- the broker ----------------------------------------------------------------------------------


class MosquittoBroker:
    """One site's Mosquitto: ``with MosquittoBroker(tmp, site="S1") as broker:`` starts it.

    ``add_controller()`` / ``add_cabinet(id)`` create users with random passwords and return
    ready addresses (a running broker rereads its files at once, :meth:`reload`).  A broker opened
    over an existing work directory keeps the users of its password file (their passwords are
    unknown to it: adding such a user again gives it a new password).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        site: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: bool = True,
        tls_files: TlsFiles | None = None,
        persistence: bool = False,
        run_as: str | None = None,
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        self._site = check_id(site, "site")
        self._workdir = Path(workdir).resolve()
        self._host = host
        self._port = port if port is not None else free_port(host)
        # A port we chose may be taken by someone else before mosquitto binds it (free_port is
        # racy); until a start succeeds or credentials name the port, start() may choose again.
        self._port_movable = port is None
        self._tls = tls
        self._tls_files = tls_files
        self._persistence = persistence
        # Started as root, mosquitto drops to this user before reading the password and ACL
        # files; the files here belong to whoever runs this, so by default it stays that user.
        self._run_as = run_as if run_as is not None else pwd.getpwuid(os.geteuid()).pw_name
        self._start_timeout = start_timeout
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._hashes = _read_password_file(self.password_file)
        self._passwords: dict[str, str] = {}  # only users created by this object, in memory only
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- paths and addresses

    @property
    def site(self) -> str:
        return self._site

    @property
    def workdir(self) -> Path:
        return self._workdir

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        return self._port

    @property
    def conf_file(self) -> Path:
        return self._workdir / "mosquitto.conf"

    @property
    def password_file(self) -> Path:
        return self._workdir / "passwd"

    @property
    def acl_file(self) -> Path:
        return self._workdir / "acl"

    @property
    def log_file(self) -> Path:
        return self._workdir / "mosquitto.log"

    @property
    def stderr_file(self) -> Path:
        return self._workdir / "mosquitto.stderr"

    @property
    def ca_file(self) -> Path | None:
        return self._tls_material().ca_cert if self._tls else None

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._hashes)

    @property
    def address(self) -> BrokerAddress:
        """Where the broker listens, with no user: callers add credentials."""
        return BrokerAddress(
            host=self._host,
            port=self._port,
            tls=self._tls,
            ca_file=self.ca_file,
            version="5",
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"MosquittoBroker({self.address.url()}, site={self._site}, users={len(self._hashes)}, {state})"

    # -- users

    def add_controller(self) -> BrokerAddress:
        """The controller's address (the same credentials on every call of this object)."""
        return self._add_users([CONTROLLER_USER])[CONTROLLER_USER]

    def add_cabinet(self, cabinet: str) -> BrokerAddress:
        """A cabinet's address, ready to connect (the running broker is reloaded if needed)."""
        return self.add_cabinets([cabinet])[cabinet]

    def add_cabinets(self, cabinets: Iterable[str]) -> dict[str, BrokerAddress]:
        """Several cabinets with one reload."""
        return self._add_users([check_id(c, "cabinet") for c in cabinets])

    def remove_cabinet(self, cabinet: str) -> None:
        """Take a cabinet's credentials away (decommissioned or compromised).  A running broker
        is reloaded, which also disconnects the cabinet if it is connected."""
        check_id(cabinet, "cabinet")
        self._passwords.pop(cabinet, None)
        if self._hashes.pop(cabinet, None) is not None:
            self._write_users()
            if self.running:
                self.reload()

    def _add_users(self, users: list[str]) -> dict[str, BrokerAddress]:
        self._port_movable = False
        created = False
        for user in users:
            if user not in self._passwords:
                password = secrets.token_urlsafe(32)
                self._passwords[user] = password
                self._hashes[user] = hash_password(password)
                created = True
        if created:
            self._write_users()
            if self.running:
                self.reload()
        return {u: replace(self.address, username=u, password=self._passwords[u]) for u in users}

    def _write_users(self) -> None:
        lines = "".join(f"{user}:{self._hashes[user]}\n" for user in sorted(self._hashes))
        _write(self.password_file, lines.encode("utf-8"), mode=0o600)
        _write(self.acl_file, acl_text(self._site, self._hashes).encode("utf-8"), mode=0o600)

    # -- files

    def _tls_material(self) -> TlsFiles:
        if self._tls_files is None:
            here = TlsFiles(
                self._workdir / "ca.crt", self._workdir / "server.crt", self._workdir / "server.key"
            )
            if all(p.exists() for p in (here.ca_cert, here.server_cert, here.server_key)):
                self._tls_files = here
            else:
                self._tls_files = make_test_pki(self._workdir, self._host)
        return self._tls_files

    def config_text(self) -> str:
        lines = [
            f"# Mosquitto for site {self._site}, generated by ecabinet.mosquitto.",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.password_file}",
            f"acl_file {self.acl_file}",
            f"user {self._run_as}",
            f"log_dest file {self.log_file}",
            *(f"log_type {t}" for t in ("error", "warning", "notice", "information")),
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            # Commands and acks are small packets answered at once: without TCP_NODELAY, Nagle
            # and delayed ACKs can hold one back for tens of milliseconds.
            "set_tcp_nodelay true",
            f"max_packet_size {MAX_PACKET_SIZE}",
        ]
        if self._persistence:
            lines += ["persistence true", f"persistence_location {self._workdir}/"]
        else:
            lines.append("persistence false")
        lines.append(f"listener {self._port} {self._host}")
        if self._tls:
            files = self._tls_material()
            lines += [
                f"cafile {files.ca_cert}",
                f"certfile {files.server_cert}",
                f"keyfile {files.server_key}",
                # Mosquitto 2.0: the *minimum* version accepted on this listener.
                "tls_version tlsv1.2",
                "require_certificate false",
            ]
        return "\n".join(lines) + "\n"

    def write_config_only(self) -> Path:
        """Write the config, password, ACL and (test) TLS files; start nothing.  Returns the config."""
        self._write_users()
        _write(self.conf_file, self.config_text().encode("utf-8"), mode=0o644)
        self._hand_over()
        return self.conf_file

    def _hand_over(self) -> None:
        """Started as root, mosquitto 2.0 drops to ``run_as`` *before* it opens its log, password,
        ACL and key files, so that user must own them (and be able to reach the work directory)."""
        if os.geteuid() != 0:
            return
        try:
            entry = pwd.getpwnam(self._run_as)
        except KeyError:
            raise MosquittoError(f"no user {self._run_as!r} to run mosquitto as") from None
        if entry.pw_uid == 0:
            return
        paths = [self._workdir, self.password_file, self.acl_file, self.log_file]
        if self._tls:
            paths.append(self._tls_material().server_key)
        for path in paths:
            if path.exists():
                try:
                    os.chown(path, entry.pw_uid, entry.pw_gid)
                except OSError as exc:
                    raise MosquittoError(
                        f"cannot give {path} to {self._run_as}: {exc.strerror}"
                    ) from exc

    # -- process

    def start(self) -> None:
        """Run ``mosquitto -c`` and return once the port accepts TLS (or TCP without TLS)."""
        if self.running:
            raise MosquittoError(f"mosquitto for {self.address.url()} is already running")
        try:
            self._start_once()
        except BrokerStartError as exc:
            if not (self._port_movable and "Address already in use" in exc.log_tail):
                raise
            log.info("port %d was taken before mosquitto bound it; trying another", self._port)
            self._port = free_port(self._host)
            self._start_once()
        self._port_movable = False

    def _start_once(self) -> None:
        binary = mosquitto_binary()
        self.write_config_only()
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.stderr_file.open("wb") as stderr:
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary, our own config
                [binary, "-c", str(self.conf_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=self._workdir,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        log.info("mosquitto for site %s on %s (pid %s)", self._site, self.address.url(), self.pid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        problem = "no answer"
        while True:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise BrokerStartError(
                    f"mosquitto exited with status {code} on start ({self.address.url()})",
                    log_tail=self.log_tail(),
                )
            try:
                self._probe()
                return
            except OSError as exc:
                problem = type(exc).__name__ + (f": {exc.strerror}" if exc.strerror else f": {exc}")
            if time.monotonic() >= deadline:
                raise BrokerStartError(
                    f"mosquitto did not accept {'TLS' if self._tls else 'TCP'} on "
                    f"{self.address.url()} within {self._start_timeout:g} s ({problem})",
                    log_tail=self.log_tail(),
                )
            time.sleep(_POLL)  # polling an external process: there is no event to wait on

    def _probe(self) -> None:
        # A short timeout: a probe that times out is simply tried again until the deadline.
        with socket.create_connection((self._host, self._port), timeout=0.25) as raw:
            if self._tls:
                context = self.address.tls_context()
                assert context is not None
                # wrap_socket completes the handshake: certificate, chain and host name are good.
                tls = context.wrap_socket(raw, server_hostname=self._host)
                # A close_notify keeps an OpenSSL "unexpected eof" out of the broker's log.
                with contextlib.suppress(OSError):
                    tls.unwrap()
                tls.close()

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout``)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL: the broker vanishes mid-flight (fault tests)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop (if still running) and start again on the same port with the same files."""
        self.stop()
        self.start()

    def reload(self) -> None:
        """Apply the files as they are now: SIGHUP, then wait until mosquitto has reread
        its files.  Mosquitto 2.0 rereads the password and ACL files on SIGHUP and re-checks the
        clients already connected against them (src/loop.c, ``flag_reload``)."""
        self.write_config_only()
        if not self.running:
            return
        assert self._process is not None
        before = self._reload_count()
        self._process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + self._start_timeout
        while self._reload_count() <= before:
            if not self.running:
                raise BrokerStartError("mosquitto exited on reload", log_tail=self.log_tail())
            if time.monotonic() >= deadline:
                raise BrokerStartError(
                    "mosquitto did not log a reload after SIGHUP", log_tail=self.log_tail()
                )
            time.sleep(_POLL)

    def _reload_count(self) -> int:
        # "Reloading config." is logged at the top of the main-loop iteration that rereads the
        # files; the broker is single-threaded, so a CONNECT sent after seeing it is checked
        # against the new files.
        try:
            with self.log_file.open("rb") as handle:
                handle.seek(self._log_offset)
                return handle.read().count(b"Reloading config.")
        except OSError:
            return 0

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of this run's log and stderr (user names, never passwords)."""
        parts: list[str] = []
        for path, offset in ((self.log_file, self._log_offset), (self.stderr_file, 0)):
            try:
                with path.open("rb") as handle:
                    handle.seek(offset)
                    text = handle.read()[-8192:].decode("utf-8", "replace")
            except OSError:
                continue
            parts.extend(text.splitlines()[-lines:])
        return "\n".join(parts)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
