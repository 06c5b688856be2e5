"""``perso``: the operator and engineer command line.

Exit codes: 0 success; 1 a card failed personalisation or verification; 2 usage or setup error
(bad arguments, missing keystore, unreadable file); 3 every card passed but some application records
were rejected (see the report).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from chip.errors import ChipError
from personaliser.errors import PersoError

__all__ = ["main"]

EXIT_OK, EXIT_CARD_FAILED, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3


def _cmd_keys_init(args: argparse.Namespace) -> int:
    from personaliser.keystore import FileKeystore

    ks = FileKeystore.init(args.dir, country=args.country, key_alg=args.algorithm)
    subject = ks.ds_certificate().subject.rfc4514_string()
    print(f"keystore created in {ks.path} (CSCA, Document Signer '{subject}', perso master key)")
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


def _cmd_chip_personalise(args: argparse.Namespace) -> int:
    from personaliser.applications import Rejection, read_applications
    from personaliser.chipstage import run_chip_stage
    from personaliser.keystore import FileKeystore

    keystore = FileKeystore(args.keys)
    source = Path(args.applications)
    if not source.is_file():
        print(f"perso: applications file not found: {source}", file=sys.stderr)
        return EXIT_USAGE
    items = list(read_applications(source))
    for item in items:
        if isinstance(item, Rejection):
            print(
                f"rejected: line {item.line}: field '{item.field}': {item.reason}", file=sys.stderr
            )
    report = run_chip_stage(items, keystore, Path(args.out))
    data = report.as_dict()
    for card in report.cards:
        if not card.passed:
            print(f"FAILED {card.application_id} ({card.card_id}): {'; '.join(card.reasons)}")
    print(_summary(data, Path(args.out)))
    return _exit_for(data)


def _cmd_demo(args: argparse.Namespace) -> int:
    from personaliser.applications import read_applications
    from personaliser.chipstage import run_chip_stage
    from personaliser.keystore import FileKeystore
    from personaliser.synth import synth_applications

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys_dir = out / "keys"
    keystore = FileKeystore(keys_dir) if keys_dir.exists() else FileKeystore.init(keys_dir)
    apps_file = out / "applications.jsonl"
    with apps_file.open("w", encoding="utf-8") as fh:
        for app in synth_applications(args.cards, seed=args.seed):
            fh.write(app.to_json_line() + "\n")
    print(f"demo: {args.cards} synthetic applications in {apps_file}")
    report = run_chip_stage(read_applications(apps_file), keystore, out)
    data = report.as_dict()
    print(_summary(data, out))
    return _exit_for(data)


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
    pers.set_defaults(func=_cmd_chip_personalise)

    demo = sub.add_parser("demo", help="run the main job on embedded defaults")
    demo.add_argument("--cards", type=int, default=20)
    demo.add_argument("--out", default="demo-out")
    demo.add_argument("--seed", type=int, default=1)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (PersoError, ChipError) as exc:
        print(f"perso: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"perso: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
