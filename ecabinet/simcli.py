"""``perso cabinet sim``: run one emulated cabinet against a broker until Ctrl-C or SIGTERM.

The lead wires :func:`add_sim_arguments` and :func:`run_sim` into ``personaliser/cli.py``; for
tests and for running a cabinet without the rest of the engine, ``python -m ecabinet.simcli``
takes the same arguments.

Ctrl-C and SIGTERM shut down cleanly (``offline``/``shutdown`` published, DISCONNECT sent).  An
injected ``power_loss`` stops the cabinet dead (the broker publishes its will) and powers it up
again after ``--restart-after`` seconds from its persisted state, as a power cycle would.
Exit status: 0 after a clean shutdown, 1 if the emulator failed, 2 for bad arguments or files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ecabinet.device import FaultKind, Hand, Mechanics
from ecabinet.errors import CabinetError
from ecabinet.keyfile import read_cabinet_key_file
from ecabinet.mqtt import BrokerAddress
from ecabinet.sim import CabinetSim
from ecabinet.slots import MAX_DRAWERS, MAX_SLOTS_PER_DRAWER
from ecabinet.topics import check_id

__all__ = ["add_sim_arguments", "main", "parse_fault", "run_sim"]

FaultSpec = tuple[FaultKind, int | None, int | None]


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site id (one topic level)")
    parser.add_argument("--cabinet", required=True, help="cabinet id (one topic level)")
    parser.add_argument("--drawers", type=int, default=4, help="drawers (default 4)")
    parser.add_argument("--slots", type=int, default=50, help="slots per drawer (default 50)")
    parser.add_argument("--broker", required=True, help="mqtt://host[:port] or mqtts://host[:port]")
    parser.add_argument(
        "--key-file", required=True, type=Path, help="the cabinet's key file (128 hex digits, 0600)"
    )
    parser.add_argument("--username", help="broker user name (Mosquitto ACLs: the cabinet id)")
    parser.add_argument("--password-file", type=Path, help="file holding the broker password")
    parser.add_argument("--ca", type=Path, help="CA certificate for mqtts://")
    parser.add_argument("--client-cert", type=Path, help="client certificate for mqtts://")
    parser.add_argument("--client-key", type=Path, help="client certificate's private key")
    parser.add_argument("--mqtt-version", choices=("5", "3.1.1"), default="5")
    parser.add_argument(
        "--state-dir", required=True, type=Path, help="where the cabinet keeps its journal"
    )
    parser.add_argument(
        "--hand",
        choices=[h.value for h in Hand],
        default=Hand.AUTO.value,
        help="auto: cards go in and out and doors close by themselves; manual: doors wait",
    )
    parser.add_argument("--speed", type=float, default=1.0, help="mechanics speed factor")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats")
    parser.add_argument(
        "--inventory-interval",
        type=float,
        default=1.0,
        help="at most one retained snapshot per this many seconds while slots change "
        "(0: after every change); connect and scans publish at once",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[@D/I]",
        help=f"inject a one-shot fault ({', '.join(k.value for k in FaultKind)}),"
        " at slot D/I or at the next occasion anywhere; repeatable",
    )
    parser.add_argument(
        "--restart-after",
        type=float,
        default=2.0,
        help="seconds without power after an injected power_loss (default 2)",
    )
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="do not sync the journal (load tests only: a machine crash may lose state)",
    )


def parse_fault(text: str) -> FaultSpec:
    """``jam`` or ``jam@2/15`` -> (FaultKind.JAM, 2, 15)."""
    kind_text, _, where = text.partition("@")
    try:
        kind = FaultKind(kind_text.strip())
    except ValueError:
        raise ValueError(
            f"unknown fault {kind_text!r}; one of {', '.join(k.value for k in FaultKind)}"
        ) from None
    if not where:
        return kind, None, None
    drawer_text, slash, index_text = where.partition("/")
    if not slash or not drawer_text.isdigit() or not index_text.isdigit():
        raise ValueError(f"fault slot must be DRAWER/INDEX, not {where!r}")
    return kind, int(drawer_text), int(index_text)


def _password(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CabinetError(f"cannot read password file {path}: {exc.strerror}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise CabinetError(f"password file {path} is empty")
    return password


def _build(args: argparse.Namespace) -> tuple[CabinetSim, list[FaultSpec]]:
    check_id(args.site, "site")
    check_id(args.cabinet, "cabinet")
    if not 1 <= args.drawers <= MAX_DRAWERS:
        raise ValueError(f"--drawers must be 1..{MAX_DRAWERS}")
    if not 1 <= args.slots <= MAX_SLOTS_PER_DRAWER:
        raise ValueError(f"--slots must be 1..{MAX_SLOTS_PER_DRAWER}")
    if not args.heartbeat > 0 or not args.speed > 0 or args.restart_after < 0:
        raise ValueError("--heartbeat and --speed must be > 0, --restart-after >= 0")
    if args.inventory_interval < 0:
        raise ValueError("--inventory-interval must be >= 0")
    faults = [parse_fault(f) for f in args.fault]
    for _, drawer, index in faults:
        if (
            drawer is not None
            and index is not None
            and not (1 <= drawer <= args.drawers and 1 <= index <= args.slots)
        ):
            raise ValueError(f"fault slot {drawer}/{index} is not in this cabinet")
    keys = read_cabinet_key_file(args.key_file)
    address = BrokerAddress.parse(
        args.broker,
        username=args.username,
        password=_password(args.password_file),
        ca_file=args.ca,
        cert_file=args.client_cert,
        key_file=args.client_key,
        version=args.mqtt_version,
    )
    sim = CabinetSim(
        args.site,
        args.cabinet,
        keys,
        address,
        args.state_dir,
        drawers=args.drawers,
        slots_per_drawer=args.slots,
        mechanics=Mechanics(speed=args.speed),
        hand=Hand(args.hand),
        heartbeat_s=args.heartbeat,
        inventory_interval_s=args.inventory_interval or None,
        durable=not args.no_fsync,
    )
    return sim, faults


def run_sim(args: argparse.Namespace) -> int:
    try:
        sim, faults = _build(args)
    except (CabinetError, ValueError) as exc:
        print(f"perso: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(sim, faults, args.restart_after))


async def _serve(sim: CabinetSim, faults: list[FaultSpec], restart_after: float) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        try:
            await sim.start()
        except CabinetError as exc:
            print(f"perso: {exc}", file=sys.stderr)
            return 2
        for kind, drawer, index in faults:
            sim.device.inject(kind, drawer, index)
        print(
            f"cabinet {sim.site}/{sim.cabinet}: {sim.drawers}x{sim.slots_per_drawer} slots, "
            f"broker {sim.address.url()}, state in {sim.state_dir}",
            file=sys.stderr,
        )
        while True:
            if not await _until_stop_or_down(sim, stop):
                break
            if sim.failure is not None:
                print(f"perso: cabinet {sim.cabinet} halted: {sim.failure}", file=sys.stderr)
                return 1
            print(
                f"cabinet {sim.cabinet}: power lost; power returns in {restart_after:g} s",
                file=sys.stderr,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(restart_after):
                    await stop.wait()
            if stop.is_set():
                return 0  # no power, so nothing to shut down
            await sim.start()
        await sim.stop()
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _until_stop_or_down(sim: CabinetSim, stop: asyncio.Event) -> bool:
    """True if the cabinet went down (power cut, failure); False if asked to stop."""
    stopping = asyncio.create_task(stop.wait())
    down = asyncio.create_task(sim.wait_until(lambda: not sim.running, timeout=None))
    try:
        await asyncio.wait({stopping, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (stopping, down):
            task.cancel()
        await asyncio.gather(stopping, down, return_exceptions=True)
    return not stop.is_set()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ecabinet.simcli", description="run one emulated e-cabinet"
    )
    add_sim_arguments(parser)
    return run_sim(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
