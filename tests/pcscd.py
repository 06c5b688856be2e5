"""Our own pcscd with N vpcd readers for the integration tests (pyscard → pcscd → vpcd → emulator).

pcsc-lite 1.9.9 as Debian builds it listens on the fixed socket /run/pcscd/pcscd.comm (no polkit in
that build, so no flag is needed as root), so only one pcscd can run on a machine: if another one is
running we fail with a clear message and leave it alone.  ``pcscd -f -c PATH`` takes a reader.conf
file or a directory of them in place of /etc/reader.conf.d; the vpcd entries come from
:func:`chip.transport.vpcd.write_reader_conf` (two slots per entry on PORT and PORT + 1, each entry
with its own copy of the driver, or the entries steal each other's slots).  vpcd binds
its ports on all interfaces, so free ports are looked for on 0.0.0.0; the cards connect over
loopback.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from chip.errors import ReaderGoneError
from chip.mrz import mrz_information
from chip.perso import SHORT_CHUNK, build_plan, personalise
from chip.protocols.scp03 import StaticKeys
from chip.random import RandomSource
from chip.transport.base import run_flow
from chip.transport.pcsc import PcscTransport, list_readers
from chip.transport.vpcd import (
    MAX_SLOTS,
    SLOTS_PER_READER,
    VPCD_DRIVER,
    VpcdSlot,
    reader_entries,
    write_reader_conf,
)
from chip.verify import Verdict, read_and_verify
from personaliser.applications import Application
from personaliser.chipstage import EXTENDED_CHUNK
from personaliser.keystore import FileKeystore

__all__ = [
    "Pcscd",
    "ReaderPool",
    "another_pcscd",
    "find_free_ports",
    "make_pcscd",
    "personalise_and_verify",
    "running_pcscd",
]

IPC_DIR = Path("/run/pcscd")


class PcscdError(RuntimeError):
    """Our test pcscd could not be started (or another one is in the way)."""


def _pcscd_binary() -> str:
    found = shutil.which("pcscd") or (
        "/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None
    )
    if found is None:
        raise PcscdError("pcscd is not installed (Debian package pcscd; `make test` installs it)")
    if not Path(VPCD_DRIVER).exists():
        raise PcscdError(f"vpcd driver {VPCD_DRIVER} missing (Debian package vsmartcard-vpcd)")
    return found


def _is_pcscd(pid: int) -> bool:
    """A live pcscd process (a zombie waiting to be reaped holds no socket)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, _, rest = stat.partition("(")[2].rpartition(")")
    return name == "pcscd" and rest.split()[:1] not in (["Z"], ["X"])


def another_pcscd() -> str | None:
    """Why we must not start a pcscd (one is running), or None."""
    pid_file = IPC_DIR / "pcscd.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_bytes().strip(b"\0\n "))
        if _is_pcscd(pid):
            return f"pcscd (pid {pid}, from {pid_file}) is running"
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_pcscd(int(entry.name)):
            return f"pcscd (pid {entry.name}) is running"
    comm = IPC_DIR / "pcscd.comm"
    if comm.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            try:
                probe.connect(str(comm))
            except OSError:
                return None
            return f"something answers on {comm}"
    return None


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("0.0.0.0", port))  # vpcd itself binds every interface
        except OSError:
            return False
    return True


def find_free_ports(count: int, *, attempts: int = 200) -> int:
    """The first of ``count`` consecutive TCP ports that nothing is bound to."""
    chooser = random.Random()
    for _ in range(attempts):
        base = chooser.randrange(20000, 60000 - count)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise PcscdError(f"found no {count} consecutive free TCP ports")


@dataclass
class Pcscd:
    """A pcscd we started, with its vpcd slots (reader name and card port each)."""

    slots: list[VpcdSlot]
    conf: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def readers(self) -> list[str]:
        return [s.reader for s in self.slots]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout_s: float = 15.0) -> None:
        if self.running:
            return
        other = another_pcscd()
        if other is not None:
            raise PcscdError(
                f"cannot start the test pcscd: {other}. pcscd 1.9.9 always listens on "
                f"{IPC_DIR}/pcscd.comm, so only one can run; stop that one (it is not ours, "
                "we leave it alone) and run the PC/SC tests again."
            )
        binary = _pcscd_binary()
        log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            # PERSO_PCSCD_DEBUG=1 makes pcscd log every call to pcscd.log (kept in the test tmp dir)
            [binary, "--foreground", "--config", str(self.conf)]
            + (["--debug", "--apdu"] if os.environ.get("PERSO_PCSCD_DEBUG") else []),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        try:
            self._wait_ready(self.process, timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        wanted = set(self.readers)
        while True:
            if process.poll() is not None:
                raise PcscdError(
                    f"pcscd exited with {process.returncode} at start:\n{self.log_tail()}"
                )
            with contextlib.suppress(ReaderGoneError):
                if wanted <= set(list_readers()):
                    return
            if time.monotonic() > deadline:
                raise PcscdError(
                    f"pcscd did not list {sorted(wanted)} within {timeout_s} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate (SIGTERM), wait, kill on timeout; leaves no process behind."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout_s)

    def restart(self) -> None:
        self.stop()
        self.start()


def make_pcscd(count: int, workdir: Path, *, prefix: str = "Perso VPCD") -> Pcscd:
    """Write the reader configuration of ``count`` vpcd slots on free ports (pcscd not started)."""
    if not 1 <= count <= MAX_SLOTS:
        raise ValueError(f"1 to {MAX_SLOTS} readers")
    span = reader_entries(count) * SLOTS_PER_READER
    conf, slots = write_reader_conf(workdir, count, find_free_ports(span), prefix=prefix)
    return Pcscd(slots=slots, conf=conf, log=workdir / "pcscd.log")


@contextlib.contextmanager
def running_pcscd(count: int, workdir: Path) -> Iterator[Pcscd]:
    """Start our pcscd with ``count`` vpcd slots, yield it, and always stop it."""
    daemon = make_pcscd(count, workdir)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


class ReaderPool:
    """Leases the slots of a shared pcscd to tests, one test per slot; a slot comes back empty."""

    def __init__(self, daemon: Pcscd) -> None:
        self.daemon = daemon
        self._free = list(daemon.slots)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self, count: int = 1, timeout_s: float = 10.0) -> Iterator[list[VpcdSlot]]:
        """``count`` slots on consecutive ports (a feeder's slots are ``first_port + i``)."""
        with self._lock:
            by_port = sorted(self._free, key=lambda s: s.port)
            block = next(
                (
                    by_port[i : i + count]
                    for i in range(len(by_port) - count + 1)
                    if by_port[i + count - 1].port - by_port[i].port == count - 1
                ),
                None,
            )
            if block is None:
                raise RuntimeError(f"no {count} free test readers on consecutive ports")
            for slot in block:
                self._free.remove(slot)
        try:
            yield block
        finally:
            for slot in block:
                self._return(slot, timeout_s)

    def _return(self, slot: VpcdSlot, timeout_s: float) -> None:
        # The next test must find the reader empty, as pcscd sees it (it polls every 400 ms).
        if self.daemon.running:
            watcher = PcscTransport(slot.reader)
            try:
                empty = watcher.wait_for_removal(timeout_s)
            except ReaderGoneError:
                empty = True
            finally:
                watcher.close()
            if not empty:
                raise RuntimeError(f"{slot.reader!r} still holds a card after its test")
        with self._lock:
            self._free.append(slot)


def personalise_and_verify(
    transport: PcscTransport,
    app: Application,
    keystore: FileKeystore,
    *,
    extended: bool = False,
    rng: RandomSource = os.urandom,
) -> tuple[Verdict, bytes]:
    """What an encoder head does with one blank: connect, personalise, reset, read back, verify.

    Returns the verdict and the chip serial the perso script saw (its KDD)."""
    plan = build_plan(app.to_holder(), keystore.document_signer())
    serial = bytearray()

    def keys_for(kdd: bytes) -> StaticKeys:
        serial[:] = kdd
        return keystore.scp03_keys_for(kdd)

    transport.connect()
    chunk = EXTENDED_CHUNK if extended else SHORT_CHUNK
    run_flow(personalise(plan, keys_for, rng=rng, chunk_size=chunk), transport)
    transport.reconnect(reset=True)  # from the encoder to the QA reader: volatile state lost
    m = plan.mrz
    verdict = run_flow(
        read_and_verify(
            mrz_information(m.document_number, m.date_of_birth, m.date_of_expiry),
            rng,
            trust_anchors=[keystore.csca_certificate()],
            expected_dg1=plan.file("DG1"),
            extended=extended,
        ),
        transport,
    )
    return verdict, bytes(serial)
