"""``perso``: the operator and engineer command line.

Exit codes: 0 success; 1 a card failed personalisation or verification (or a cabinet operation did
not complete); 2 usage or setup error (bad arguments, missing keystore, unreadable file); 3 every card
passed but some application records were rejected (see the report), or an officer was refused.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chip.errors import ChipError
from ecabinet.errors import AuthorisationError, CabinetError
from personaliser.cabinetcli import add_audit_commands, add_cabinet_commands
from personaliser.errors import PersoError
from personaliser.web.cli import add_serve_command

__all__ = ["main"]

EXIT_OK, EXIT_CARD_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


def _cmd_keys_init(args: argparse.Namespace) -> int:
    from personaliser.keystore import FileKeystore

    ks = FileKeystore.init(args.dir, country=args.country, key_alg=args.algorithm)
    subject = ks.ds_certificate().subject.rfc4514_string()
    print(f"keystore created in {ks.path} (CSCA, Document Signer '{subject}', perso master key)")
    return EXIT_OK


def _cmd_keys_add_data_key(args: argparse.Namespace) -> int:
    from personaliser.keystore import FileKeystore

    FileKeystore.add_data_key(args.dir)
    print(f"data key added to {args.dir}")
    return EXIT_OK


def _cmd_keys_add_cabinet_key(args: argparse.Namespace) -> int:
    from personaliser.keystore import FileKeystore

    FileKeystore.add_cabinet_key(args.dir)
    print(f"e-cabinet key added to {args.dir}")
    return EXIT_OK


def _cmd_applications_synth(args: argparse.Namespace) -> int:
    from personaliser.synth import synth_applications

    if args.count < 0:
        print("perso: the count must not be negative", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout
    for app in synth_applications(args.count, seed=args.seed):
        out.write(app.to_json_line() + "\n")
    return EXIT_OK


def _summary(report_dict: dict[str, object], out_dir: Path) -> str:
    lines = [
        f"cards personalised : {report_dict['cards_personalised']}",
        f"passed / failed    : {report_dict['cards_passed']} / {report_dict['cards_failed']}",
        f"records rejected   : {report_dict['applications_rejected']}",
        f"wall time          : {report_dict['seconds']} s",
        f"CPU per card       : {report_dict['cpu_ms_per_card']} ms (all work incl. emulated chips"
        f" and files; host share {report_dict['host_ms_per_card']} ms)",
        f"report             : {out_dir / 'report.json'}",
    ]
    return "\n".join(lines)


def _exit_for(report_dict: dict[str, object]) -> int:
    if report_dict["cards_failed"]:
        return EXIT_CARD_FAILED
    if report_dict["applications_rejected"]:
        return EXIT_REJECTED
    return EXIT_OK


def _read_intake(path: str) -> list[Any] | None:
    from personaliser.applications import Rejection, read_applications

    source = Path(path)
    if not source.is_file():
        print(f"perso: applications file not found: {source}", file=sys.stderr)
        return None
    items: list[Any] = list(read_applications(source))
    for item in items:
        if isinstance(item, Rejection):
            print(
                f"rejected: line {item.line}: field '{item.field}': {item.reason}", file=sys.stderr
            )
    return items


def _personalise_on_readers(args: argparse.Namespace, items: list[Any]) -> int:
    from chip.transport.pcsc import PcscTransport, list_readers
    from personaliser.applications import Application, Rejection
    from personaliser.heads import run_head_pool
    from personaliser.keystore import FileKeystore
    from personaliser.outputs import publish_pki, write_json

    keystore = FileKeystore(args.keys)
    names = list_readers(args.readers)
    if not names:
        print(f"perso: no PC/SC reader matches {args.readers!r}", file=sys.stderr)
        return EXIT_USAGE
    print(f"encoder heads: {len(names)} ({', '.join(names)})", file=sys.stderr)
    out = Path(args.out)
    publish_pki(keystore, out)
    apps = [i for i in items if isinstance(i, Application)]
    rejected = [i for i in items if isinstance(i, Rejection)]
    transports = [PcscTransport(name, timeout_s=args.card_timeout) for name in names]
    report = run_head_pool(
        apps,
        transports,
        keystore,
        out,
        extended_reads=args.extended,
        chunk_size=4096 if args.extended else 239,
    )
    for t in transports:
        t.close()
    data = report.as_dict()
    data["rejections"] = [r.as_dict() for r in rejected]
    data["applications_rejected"] = len({r.line for r in rejected})
    data["cards_requested"] += data["applications_rejected"]
    write_json(out / "report.json", data)
    for head in data["heads"]:
        state = "in service" if head["in_service"] else f"OUT: {head['out_of_service_reason']}"
        print(
            f"  {head['reader']}: {head['passed']} passed, {head['spoiled']} spoiled, "
            f"mean APDU {head['mean_apdu_ms']} ms, {state}"
        )
    for spoil in data["spoil_log"]:
        print(f"spoiled blank on {spoil['reader']} ({spoil['application_id']}): {spoil['reason']}")
    if data["not_done"]:
        print(f"NOT DONE: {len(data['not_done'])} application(s): {', '.join(data['not_done'])}")
    print(
        f"cards passed: {data['cards_passed']} of {len(apps)}; blanks spoiled: "
        f"{data['stock']['spoiled']}; report: {out / 'report.json'}"
    )
    if data["not_done"] or data["cards_failed"]:
        return EXIT_CARD_FAILED
    return EXIT_REJECTED if rejected else EXIT_OK


def _cmd_chip_personalise(args: argparse.Namespace) -> int:
    from personaliser.chipstage import run_chip_stage
    from personaliser.keystore import FileKeystore

    items = _read_intake(args.applications)
    if items is None:
        return EXIT_USAGE
    if args.readers is not None:
        return _personalise_on_readers(args, items)
    keystore = FileKeystore(args.keys)
    report = run_chip_stage(items, keystore, Path(args.out))
    data = report.as_dict()
    for card in report.cards:
        if not card.passed:
            print(f"FAILED {card.application_id} ({card.card_id}): {'; '.join(card.reasons)}")
    print(_summary(data, Path(args.out)))
    return _exit_for(data)


def _cmd_chip_serve(args: argparse.Namespace) -> int:
    from personaliser.serve import serve_blanks_command, serve_image_command

    if args.image is not None:
        return serve_image_command(Path(args.image), host=args.host, port=args.port)
    if args.keys is None or args.out is None:
        print("perso: --blanks needs --keys and --out", file=sys.stderr)
        return EXIT_USAGE
    return serve_blanks_command(
        args.blanks, args.first_port, Path(args.keys), Path(args.out), host=args.host
    )


def _cmd_chip_read(args: argparse.Namespace) -> int:
    from chip.pki import load_certificate
    from chip.transport.pcsc import PcscTransport
    from personaliser.applications import Application
    from personaliser.reading import (
        MrzKey,
        describe,
        mrz_keys_from_applications,
        read_with_mrz,
        save_files,
    )

    if args.mrz_from is not None:
        items = _read_intake(args.mrz_from)
        if items is None:
            return EXIT_USAGE
        keys = mrz_keys_from_applications(i for i in items if isinstance(i, Application))
    elif args.doc and args.dob and args.expiry:
        keys = [MrzKey(args.doc.upper(), args.dob, args.expiry)]
    else:
        print("perso: give --mrz-from FILE or all of --doc, --dob, --expiry", file=sys.stderr)
        return EXIT_USAGE
    csca = Path(args.csca) if args.csca else Path(args.keys or "") / "csca.pem"
    if not csca.is_file():
        print(f"perso: CSCA certificate not found: {csca} (give --csca or --keys)", file=sys.stderr)
        return EXIT_USAGE
    with PcscTransport(args.reader, timeout_s=args.card_timeout) as reader:
        result = read_with_mrz(reader, keys, trust_anchors=[load_certificate(csca)])
    for line in describe(result):
        print(line)
    if result.verdict is None:
        return EXIT_CARD_FAILED
    if args.out:
        save_files(result.verdict, Path(args.out))
    return EXIT_OK if result.verdict.passed else EXIT_CARD_FAILED


def _home(args: argparse.Namespace) -> Any:
    from personaliser.operations import Home

    return Home.resolve(getattr(args, "home", None))


def _cmd_applications_import(args: argparse.Namespace) -> int:
    from personaliser.operations import import_applications

    home = _home(args)
    source = Path(args.file)
    if not source.is_file():
        print(f"perso: applications file not found: {source}", file=sys.stderr)
        return EXIT_USAGE
    keystore = home.ensure()
    with home.open_store(keystore) as store:
        counts, rejections = import_applications(store, source)
    for r in rejections:
        print(f"rejected: line {r.line}: field '{r.field}': {r.reason}", file=sys.stderr)
    print(
        f"imported {source}: {counts.new} new, {counts.duplicate} already known, "
        f"{counts.conflicting} conflicting (kept the stored record), {counts.rejected} rejected"
    )
    return EXIT_REJECTED if counts.rejected else EXIT_OK


def _line_config_for_plan(args: argparse.Namespace) -> Any:
    from scheduler import LineConfig

    return LineConfig(
        cards_per_hour=args.cards_per_hour,
        hours_per_day=args.hours_per_day,
        tray_size=args.tray_size,
    )


def _today(args: argparse.Namespace) -> Any:
    from datetime import date

    return date.fromisoformat(args.today) if args.today else date.today()


def _start(args: argparse.Namespace) -> Any:
    from personaliser.operations import start_of

    return start_of(_today(args)) if args.today else None


def _print_plan(the_plan: Any, capacity: Any) -> None:
    print(f"{'batch':<28} {'office':<10} {'due':<10} {'prio':<8} {'cards':>5}  ready")
    ready = {s.batch_id: s for s in capacity.schedule}
    for b in the_plan.batches:
        s = ready.get(b.batch_id)
        when = s.ready.strftime("%Y-%m-%d %H:%M") if s is not None else "-"
        risk = "  AT RISK" if s is not None and s.at_risk else ""
        print(
            f"{b.batch_id:<28} {b.office:<10} {b.due_date.isoformat():<10} "
            f"{b.priority.name.lower():<8} {len(b.items):>5}  {when}{risk}"
        )
    for d in the_plan.deferred:
        print(f"deferred {d.item.application_id}: {d.reason.value}")
    print(
        f"{the_plan.cards} cards in {len(the_plan.batches)} batches; at risk: {len(capacity.at_risk)}"
    )


def _cmd_batch_plan(args: argparse.Namespace) -> int:
    from personaliser.operations import cabinet_free_slots, plan

    home = _home(args)
    with home.open_store() as store:
        the_plan, capacity = plan(
            store, today=_today(args), line=_line_config_for_plan(args), start=_start(args),
            free_slots=cabinet_free_slots(home, store),
        )  # fmt: skip
    _print_plan(the_plan, capacity)
    return EXIT_OK


def _cmd_batch_start(args: argparse.Namespace) -> int:
    from personaliser.operations import cabinet_free_slots, plan, start_batches

    if not args.all and not args.batch:
        print("perso: give --batch ID (repeatable) or --all", file=sys.stderr)
        return EXIT_USAGE
    home = _home(args)
    with home.open_store() as store:
        the_plan, _capacity = plan(
            store, today=_today(args), line=_line_config_for_plan(args), start=_start(args),
            free_slots=cabinet_free_slots(home, store),
        )  # fmt: skip
        try:
            queued = start_batches(store, the_plan, None if args.all else args.batch)
        except ValueError as exc:
            print(f"perso: {exc}", file=sys.stderr)
            return EXIT_USAGE
    for batch_id, n in queued.items():
        print(f"queued {n} cards of {batch_id}")
    return EXIT_OK


def _cmd_batch_status(args: argparse.Namespace) -> int:
    from personaliser.lifecycle import State
    from personaliser.operations import status

    home = _home(args)
    with home.open_store() as store:
        rows = status(store)
    shown = [State.QUEUED, State.ENCODING, State.PRINTING, State.VERIFYING, State.PASSED,
             State.SPOILED, State.DISPATCHED]  # fmt: skip
    header = " ".join(f"{s.value[:8]:>8}" for s in shown)
    print(f"{'batch':<28} {'office':<10} {'due':<10} {'cards':>5} {header}")
    for row in rows:
        cells = " ".join(f"{row.counts.get(s, 0):>8}" for s in shown)
        print(
            f"{row.batch_id:<28} {row.office:<10} {row.due_date.isoformat():<10} "
            f"{row.total:>5} {cells}"
        )
    return EXIT_OK


def _cmd_stock_report(args: argparse.Namespace) -> int:
    from personaliser.operations import stock_report

    home = _home(args)
    with home.open_store() as store:
        report = stock_report(store)
    print(
        f"{'batch':<28} {'issued':>7} {'good':>6} {'spoiled':>8} {'samples':>8} {'returned':>9} ok"
    )
    unbalanced = 0
    for batch_id, s in report.items():
        ok = "yes" if s.balanced else "NO"
        unbalanced += not s.balanced
        print(
            f"{batch_id:<28} {s.issued:>7} {s.good:>6} {s.spoiled:>8} {s.samples:>8} "
            f"{s.returned:>9} {ok}"
        )
    return EXIT_CARD_FAILED if unbalanced else EXIT_OK


def _cmd_print_proof(args: argparse.Namespace) -> int:
    from personaliser.faces import write_application_proofs

    files, rejected = write_application_proofs(
        args.applications, args.out, layout=args.layout, dpi=args.dpi
    )
    for r in rejected:
        print(f"rejected: line {r.line}: field '{r.field}': {r.reason}", file=sys.stderr)
    print(f"proofs of {len(files)} card(s) in {Path(args.out) / 'cards'}")
    return EXIT_REJECTED if rejected else EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from personaliser.linecli import demo

    return demo(args.cards, args.out, args.seed, args.metrics_port)


def _cmd_bench(args: argparse.Namespace) -> int:
    # bench/ is never imported by product code: only this subcommand reaches it (DESIGN §2).
    from bench.cli import bench_command

    return bench_command(args.quick, args.json, args.out)


def _cmd_line_run(args: argparse.Namespace) -> int:
    from personaliser.linecli import line_run

    return line_run(args.home, args.config, args.out, args.metrics_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perso", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="key management").add_subparsers(
        dest="action", required=True
    )
    init = keys.add_parser("init", help="create a test CSCA, Document Signer and perso master key")
    init.add_argument("--dir", required=True, help="keystore directory (created 0700)")
    init.add_argument("--country", default="CN", help="ISO 3166 alpha-2 country of the CSCA")
    init.add_argument(
        "--algorithm",
        default="ecdsa-p256",
        choices=("ecdsa-p256", "ecdsa-brainpoolp256r1", "rsa-pss-3072"),
        help="signature algorithm of the CSCA and Document Signer",
    )
    init.set_defaults(func=_cmd_keys_init)
    add_dk = keys.add_parser("add-data-key", help="provision the store's data key in a keystore")
    add_dk.add_argument("--dir", required=True)
    add_dk.set_defaults(func=_cmd_keys_add_data_key)
    add_ck = keys.add_parser("add-cabinet-key", help="provision the e-cabinet root key")
    add_ck.add_argument("--dir", required=True)
    add_ck.set_defaults(func=_cmd_keys_add_cabinet_key)

    apps = sub.add_parser("applications", help="approved applications")
    apps_sub = apps.add_subparsers(dest="action", required=True)
    synth = apps_sub.add_parser("synth", help="write N synthetic applications as JSONL to stdout")
    synth.add_argument("count", type=int)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_applications_synth)

    chip = sub.add_parser("chip", help="chip encoding")
    chip_sub = chip.add_subparsers(dest="action", required=True)
    pers = chip_sub.add_parser("personalise", help="personalise and verify emulated chips")
    pers.add_argument("--applications", required=True, help="approved applications (JSONL)")
    pers.add_argument("--keys", required=True, help="keystore directory (perso keys init)")
    pers.add_argument("--out", required=True, help="output directory")
    pers.add_argument(
        "--readers",
        metavar="NAME-SUBSTRING",
        help="personalise through every PC/SC reader whose name contains this (one head each)",
    )
    pers.add_argument(
        "--extended", action="store_true", help="use extended-length APDUs on the readers"
    )
    pers.add_argument("--card-timeout", type=float, default=5.0, help="seconds to wait for a blank")
    pers.set_defaults(func=_cmd_chip_personalise)

    serve = chip_sub.add_parser("serve", help="present chip images in vpcd virtual readers")
    what = serve.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="one chip image, written back on exit")
    what.add_argument("--blanks", type=int, help="a feeder of N fresh blanks on N readers")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=35963, help="vpcd port (with --image)")
    serve.add_argument("--first-port", type=int, default=35963, help="first port (with --blanks)")
    serve.add_argument("--keys", help="keystore (with --blanks: the blanks' SCP03 keys)")
    serve.add_argument("--out", help="where finished and spoiled cards go (with --blanks)")
    serve.set_defaults(func=_cmd_chip_serve)

    read = chip_sub.add_parser("read", help="read and verify a card like a border reader")
    read.add_argument("--reader", required=True, help="PC/SC reader name")
    read.add_argument("--mrz-from", help="applications (JSONL) whose MRZs are tried in turn")
    read.add_argument("--doc", help="document number")
    read.add_argument("--dob", help="date of birth YYMMDD")
    read.add_argument("--expiry", help="date of expiry YYMMDD")
    read.add_argument("--csca", help="trusted CSCA certificate (PEM)")
    read.add_argument("--keys", help="keystore whose csca.pem is trusted")
    read.add_argument("--out", help="save the files read into this directory")
    read.add_argument("--card-timeout", type=float, default=5.0)
    read.set_defaults(func=_cmd_chip_read)

    imp = apps_sub.add_parser("import", help="validate and store approved applications (JSONL)")
    imp.add_argument("file")
    imp.add_argument(
        "--home", help="line home (keys/, perso.db); default $PERSO_HOME or ./perso-home"
    )
    imp.set_defaults(func=_cmd_applications_import)

    batch = sub.add_parser("batch", help="batches of cards").add_subparsers(
        dest="action", required=True
    )
    for name, func, text in (
        (
            "plan",
            _cmd_batch_plan,
            "plan approved applications into batches; show the capacity plan",
        ),
        ("start", _cmd_batch_start, "queue batches for the line"),
    ):
        cmd = batch.add_parser(name, help=text)
        cmd.add_argument("--home")
        cmd.add_argument("--today", help="planning date YYYY-MM-DD (default: today)")
        cmd.add_argument("--tray-size", type=int, default=50)
        cmd.add_argument("--cards-per-hour", type=float, default=1000)
        cmd.add_argument("--hours-per-day", type=float, default=8)
        if name == "start":
            cmd.add_argument("--batch", action="append", help="batch id (repeatable)")
            cmd.add_argument("--all", action="store_true")
        cmd.set_defaults(func=func)
    st = batch.add_parser("status", help="cards per state for every batch")
    st.add_argument("--home")
    st.set_defaults(func=_cmd_batch_status)

    stock = sub.add_parser("stock", help="blank stock").add_subparsers(dest="action", required=True)
    rep = stock.add_parser("report", help="issued = good + spoiled + samples + returned, per batch")
    rep.add_argument("--home")
    rep.set_defaults(func=_cmd_stock_report)

    printing = sub.add_parser("print", help="card faces").add_subparsers(
        dest="action", required=True
    )
    proof = printing.add_parser("proof", help="front.png and back.png of every application")
    proof.add_argument("--applications", required=True)
    proof.add_argument("--out", required=True)
    proof.add_argument("--layout", default="hkid-2018", help="built-in layout name or a TOML file")
    proof.add_argument("--dpi", type=int, default=300)
    proof.set_defaults(func=_cmd_print_proof)

    demo = sub.add_parser("demo", help="run the main job on embedded defaults")
    demo.add_argument("--cards", type=int, default=20)
    demo.add_argument("--out", default="demo-out")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")

    bench = sub.add_parser("bench", help="throughput benchmarks (engine, line efficiency, scale)")
    bench.add_argument("--quick", action="store_true", help="small sizes (about 20 s)")
    bench.add_argument("--json", action="store_true", help="print the JSON instead of a table")
    bench.add_argument("--out", default="bench-out", help="where bench.json and throughput.png go")
    bench.set_defaults(func=_cmd_bench)

    add_cabinet_commands(sub)
    add_serve_command(sub)
    add_audit_commands(sub)

    line = sub.add_parser("line", help="the personalisation line").add_subparsers(
        dest="action", required=True
    )
    run = line.add_parser(
        "run", help="run every queued card through the line (resumes after a crash)"
    )
    run.add_argument("--home")
    run.add_argument("--config", help="line.toml (default: an in-process line)")
    run.add_argument("--out", help="output directory (default: HOME/out)")
    run.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    run.set_defaults(func=_cmd_line_run)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except AuthorisationError as exc:
        print(f"perso: refused ({exc.reason}): {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except (PersoError, ChipError, CabinetError) as exc:
        print(f"perso: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"perso: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
