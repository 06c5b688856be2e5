"""``perso cabinet …`` and ``perso audit verify``: the e-cabinet from the command line.

Counter officers find and retrieve cards; operators dispatch and deposit trays and return
uncollected cards; supervisors resolve discrepancies; anyone on the host can see the status.
Officers authenticate with their id and password (``PERSO_PASSWORD`` or a prompt); every command
is audited with the officer as the actor.

Commands that move a door start the site's controller for their duration (``open_site``); so do
``find`` and ``status``, without connecting, because the audit log and the stores have one writer
at a time.  The heavy modules are imported inside the handlers so ``perso --help`` stays quick.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecabinet.officers import Officer
    from personaliser.operations import Home
    from personaliser.site import Site, SiteConfig

__all__ = ["add_audit_commands", "add_cabinet_commands"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


def _home(args: argparse.Namespace) -> Home:
    from personaliser.operations import Home

    return Home.resolve(args.home)


def _config(args: argparse.Namespace, home: Home) -> SiteConfig:
    from personaliser.site import load_site_config

    path = Path(args.site_config) if args.site_config else home.path / "site.toml"
    return load_site_config(path)


def _password(args: argparse.Namespace) -> str:
    password = os.environ.get("PERSO_PASSWORD")
    if password is not None:
        return password
    if not sys.stdin.isatty():
        raise SystemExit("perso: set PERSO_PASSWORD or run on a terminal to be asked")
    return getpass.getpass(f"password for {args.officer}: ")


def _officer(site: Site, args: argparse.Namespace) -> Officer:
    from ecabinet.officers import authenticate

    return authenticate(site.cabinets, args.officer, _password(args))


def _with_site(
    args: argparse.Namespace, work: Callable[[Site], Awaitable[int]], *, connect: bool = True
) -> int:
    """Open the home's stores and the site, run ``work``, close everything."""
    from personaliser.site import open_site

    home = _home(args)
    keystore = home.ensure()
    config = _config(args, home)

    async def main() -> int:
        with home.open_store(keystore) as store:
            async with open_site(home, keystore, store, config, connect=connect) as site:
                return await work(site)

    return asyncio.run(main())


# -- handlers ---------------------------------------------------------------------------------------


def _cmd_keyfile(args: argparse.Namespace) -> int:
    from ecabinet.keyfile import write_cabinet_key_file

    home = _home(args)
    keys = home.ensure().site_key(args.site).cabinet(args.cabinet)
    write_cabinet_key_file(Path(args.out), keys)
    print(f"keys of cabinet {args.site}/{args.cabinet} written to {args.out} (0600)")
    return EXIT_OK


def _cmd_officer_add(args: argparse.Namespace) -> int:
    from ecabinet.officers import add_officer
    from ecabinet.store import CabinetStore

    home = _home(args)
    home.ensure()
    with CabinetStore(home.path / "cabinet.db") as cabinets:
        officer = add_officer(cabinets, args.officer, args.office, args.role, _password(args))
    print(f"officer {officer.officer_id} ({officer.role.value}) at {officer.office}")
    return EXIT_OK


def _cmd_dispatch(args: argparse.Namespace) -> int:
    from ecabinet.store import CabinetStore
    from personaliser.collection import hand_over

    home = _home(args)
    keystore = home.ensure()
    with home.open_store(keystore) as store, CabinetStore(home.path / "cabinet.db") as cabinets:
        done = hand_over(store, cabinets, keystore.lookup_key(), tray=args.tray)
    offices = ", ".join(f"{o}: {n}" for o, n in sorted(done.offices.items())) or "none"
    print(f"dispatched {done.dispatched} cards ({done.registered} new to the cabinets); {offices}")
    return EXIT_OK


def _cmd_deposit(args: argparse.Namespace) -> int:
    from ecabinet.store import CardState

    async def work(site: Site) -> int:
        cards = site.cabinets.cards(state=CardState.AWAITING_DEPOSIT, office=args.office)
        report = await site.service.deposit(args.actor, [c.application_id for c in cards])
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(report.counts().items())) or "nothing"
        print(f"deposit of {len(cards)} cards: {counts}")
        return EXIT_OK if len(report.stocked) == len(cards) else EXIT_FAILED

    return _with_site(args, work)


def _cmd_find(args: argparse.Namespace) -> int:
    async def work(site: Site) -> int:
        officer = _officer(site, args)
        views = site.service.find(
            officer, application_id=args.application, hkid=args.hkid, receipt=args.receipt
        )
        if not views:
            print("no card found at your office")
            return EXIT_FAILED
        for view in views:
            print(" ".join(f"{k}={v}" for k, v in _fields(view).items()))
        return EXIT_OK

    return _with_site(args, work, connect=False)


def _cmd_retrieve(args: argparse.Namespace) -> int:
    async def work(site: Site) -> int:
        officer = _officer(site, args)
        result = await site.service.retrieve(officer, args.application, args.receipt)
        print(" ".join(f"{k}={v}" for k, v in _fields(result).items()))
        return EXIT_OK if result.outcome == "issued" else EXIT_FAILED

    return _with_site(args, work)


def _cmd_return(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    async def work(site: Site) -> int:
        report = await site.service.return_uncollected(
            args.actor, datetime.now(UTC), args.retention_days
        )
        print(f"returned {len(report.returned)} uncollected cards of {len(report.results)}")
        return EXIT_OK

    return _with_site(args, work)


def _cmd_resolve(args: argparse.Namespace) -> int:
    async def work(site: Site) -> int:
        officer = _officer(site, args)
        record = await site.service.resolve_discrepancy(officer, args.discrepancy, args.resolution)
        print(f"discrepancy {record.id} resolved")
        return EXIT_OK

    return _with_site(args, work)


def _cmd_status(args: argparse.Namespace) -> int:
    async def work(site: Site) -> int:
        status = site.service.status()
        print(f"{'cabinet':<16} {'office':<10} {'slots':>5}  {'link':<7}  occupancy")
        for c in status.cabinets:
            occupancy = ", ".join(f"{k.lower()} {v}" for k, v in c.occupancy.items())
            note = f"  ({c.open_discrepancies} discrepancies)" if c.open_discrepancies else ""
            online = {True: "online", False: "OFFLINE", None: "-"}[c.online]
            print(f"{c.cabinet:<16} {c.office:<10} {c.slots:>5}  {online:<7}  {occupancy}{note}")
        open_ = [d for d in status.discrepancies if d.open]
        for d in open_:
            where = f" slot {d.drawer}/{d.index}" if d.drawer is not None else ""
            print(f"discrepancy {d.id}: {d.cabinet}{where} {d.kind.value} (raised {d.raised_at})")
        return EXIT_OK

    return _with_site(args, work, connect=False)


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    from ecabinet.audit import verify
    from ecabinet.errors import AuditError

    home = _home(args)
    log = Path(args.log) if args.log else home.path / "audit.log"
    key = home.keystore().audit_key()
    try:
        verify(log, key=key, anchored=True)
    except AuditError as exc:
        print(f"audit log {log}: FAILED at entry {exc.index}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    entries = log.read_bytes().count(b"\n")
    print(f"audit log {log}: {entries} entries, chain and MACs verified")
    return EXIT_OK


def _fields(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


# -- parsers ----------------------------------------------------------------------------------------


def add_cabinet_commands(sub: Any) -> None:
    from ecabinet.simcli import add_sim_arguments, run_sim

    cab = sub.add_parser(
        "cabinet", help="e-cabinets: deposit, find, retrieve, status"
    ).add_subparsers(dest="action", required=True)

    def command(name: str, text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        p = cab.add_parser(name, help=text)
        p.add_argument("--home")
        p.add_argument("--site-config", help="site.toml (default: HOME/site.toml)")
        p.set_defaults(func=func)
        return p

    sim = cab.add_parser("sim", help="run an emulated cabinet against a broker")
    add_sim_arguments(sim)
    sim.set_defaults(func=run_sim)

    p = command("keyfile", "write one cabinet's MQTT message keys for its firmware", _cmd_keyfile)
    p.add_argument("--site", required=True)
    p.add_argument("--cabinet", required=True)
    p.add_argument("--out", required=True)

    p = command("officer", "add an officer (password from PERSO_PASSWORD or a prompt)",
                _cmd_officer_add)  # fmt: skip
    p.add_argument("--officer", required=True)
    p.add_argument("--office", required=True)
    p.add_argument("--role", required=True,
                   choices=["counter_officer", "supervisor", "operator", "engineer"])  # fmt: skip

    p = command("dispatch", "hand the line's passed cards over to the cabinets", _cmd_dispatch)
    p.add_argument("--tray", default="line")

    p = command("deposit", "deposit every dispatched card (of one office)", _cmd_deposit)
    p.add_argument("--office")
    p.add_argument("--actor", default="operator")

    p = command("find", "find a card at your office", _cmd_find)
    p.add_argument("--officer", required=True)
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--application")
    key.add_argument("--hkid")
    key.add_argument("--receipt")

    p = command("retrieve", "open the slot of an applicant's card", _cmd_retrieve)
    p.add_argument("--officer", required=True)
    p.add_argument("--application", required=True)
    p.add_argument("--receipt", required=True, help="the applicant's collection receipt number")

    p = command("return", "take back cards uncollected past the retention period", _cmd_return)
    p.add_argument("--retention-days", type=int, default=90)
    p.add_argument("--actor", default="operator")

    p = command("resolve", "close a discrepancy after checking the slot", _cmd_resolve)
    p.add_argument("--officer", required=True)
    p.add_argument("--discrepancy", type=int, required=True)
    p.add_argument("--resolution", required=True)

    command("status", "occupancy per cabinet and open discrepancies", _cmd_status)


def add_audit_commands(sub: Any) -> None:
    audit = sub.add_parser("audit", help="the audit log").add_subparsers(
        dest="action", required=True
    )
    p = audit.add_parser("verify", help="check the hash chain, MACs and anchor of the audit log")
    p.add_argument("--home")
    p.add_argument("--log", help="audit log file (default: HOME/audit.log)")
    p.set_defaults(func=_cmd_audit_verify)
