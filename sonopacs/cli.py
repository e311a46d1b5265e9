"""The `sonopacs` command: wires subcommands to the packages, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sonopacs import __version__

if TYPE_CHECKING:
    from sonopacs.config import Settings

log = logging.getLogger("sonopacs")


def _settings(args: argparse.Namespace) -> Settings:
    from sonopacs.config import load_settings

    return load_settings(getattr(args, "config", None))


def _peer(text: str, ae_title: str) -> object:
    from sonopacs.dicom_node.scu import Peer

    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"--to must be HOST:PORT, got {text!r}")
    return Peer(host=host, port=int(port), ae_title=ae_title)


def cmd_config_show(args: argparse.Namespace) -> int:
    from sonopacs.config import masked_dump

    print(json.dumps(masked_dump(_settings(args)), indent=2))
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from sonopacs.db.migrate import upgrade

    settings = _settings(args)
    upgrade(settings.database_url)
    print("database is at the latest schema revision")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from sonopacs.dicom_node.scu import send_files

    paths: list[Path] = []
    for raw in args.paths:
        p = Path(raw)
        paths.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    report = send_files(paths, _peer(args.to, args.aet), calling_ae=args.calling_aet, timeout=args.timeout)  # type: ignore[arg-type]
    for path, reason in report.failed.items():
        print(f"FAILED {path}: {reason}", file=sys.stderr)
    print(f"sent {len(report.sent)}, failed {len(report.failed)}")
    return 0 if report.ok else 1


def cmd_echo(args: argparse.Namespace) -> int:
    from sonopacs.dicom_node.scu import AssociationError, echo
    from sonopacs.worker.export import echo_destination

    settings = _settings(args)
    if not args.to:
        if not settings.export.enabled:
            print("no destination: give --to HOST:PORT or configure the export destination", file=sys.stderr)
            return 2
        try:  # the configured destination, C-STORE (C-ECHO) or DICOMweb (a QIDO-RS query)
            print(echo_destination(settings, timeout=args.timeout))
        except Exception as exc:  # noqa: BLE001 - any failure is the answer here
            print(f"destination check failed: {exc}", file=sys.stderr)
            return 1
        return 0
    peer = _peer(args.to, args.aet or "ANY-SCP")
    try:
        status = echo(peer, calling_ae=settings.dicom.ae_title, timeout=args.timeout)  # type: ignore[arg-type]
    except AssociationError as exc:
        print(f"C-ECHO failed: {exc}", file=sys.stderr)
        return 1
    print(f"C-ECHO {peer}: status 0x{status:04X}")
    return 0 if status == 0 else 1


def cmd_listener(args: argparse.Namespace) -> int:
    from sonopacs.dicom_node.listener import run_listener

    return run_listener(_settings(args))


def cmd_worker(args: argparse.Namespace) -> int:
    from sonopacs.worker.runner import run_worker

    return run_worker(_settings(args), queues=args.queues, concurrency=args.concurrency)


def cmd_serve(args: argparse.Namespace) -> int:
    from sonopacs.serve import serve

    return serve(_settings(args), config_file=args.config)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from sonopacs.dashboard.app import run_dashboard

    return run_dashboard(_settings(args))


def _study_action(name: str, run: Callable[[], object], done: str) -> int:
    """Run a worker action on one study: its refusal is a message and exit 1, never a traceback."""
    from sonopacs.worker.actions import ActionError

    try:
        run()
    except ActionError as exc:
        print(f"{name} refused: {exc}", file=sys.stderr)
        return 1
    print(done)
    return 0


def cmd_resend(args: argparse.Namespace) -> int:
    from sonopacs.worker.actions import resend_study

    return _study_action("resend", lambda: resend_study(_settings(args), args.study_uid, actor="cli"),
                         f"export of {args.study_uid} queued again")


def cmd_purge(args: argparse.Namespace) -> int:
    from sonopacs.worker import retention
    from sonopacs.worker.context import database_for

    settings = _settings(args)
    db = database_for(settings)
    items = retention.plan(settings, db) if args.dry_run else retention.purge(settings, db)
    verb = "would delete" if args.dry_run else "deleted"
    for item in items:
        print(f"{verb} {item.part} of study {item.study_instance_uid} (exported {item.exported_at:%Y-%m-%d})")
    print(f"{len(items)} item(s) {verb}" + ("" if settings.retention.enabled else " (retention.enabled is off: "
                                            "the monitor purges nothing on its own)"))
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from sonopacs.worker.actions import set_pinned

    return _study_action("pin", lambda: set_pinned(_settings(args), args.study_uid, not args.unpin, actor="cli"),
                         f"study {args.study_uid} {'unpinned' if args.unpin else 'pinned: retention will keep it'}")


def cmd_reprocess(args: argparse.Namespace) -> int:
    from sonopacs.worker.actions import reprocess_study

    return _study_action("reprocess", lambda: reprocess_study(_settings(args), args.study_uid, actor="cli"),
                         f"{args.study_uid} queued for processing again")


def cmd_monitor(args: argparse.Namespace) -> int:
    from sonopacs.worker.stability import run_monitor_until_signalled

    return run_monitor_until_signalled(_settings(args))


def cmd_analyze(args: argparse.Namespace) -> int:
    from sonopacs.worker.single_analysis import analyze_files

    results = analyze_files(_settings(args), [Path(p) for p in args.files], Path(args.out))
    failed = [r for r in results if r.get("error")]
    for r in failed:
        print(f"FAILED {r['input']}: {r['error']}", file=sys.stderr)
    print(f"analyzed {len(results) - len(failed)}, failed {len(failed)}; results in {args.out}")
    return 0 if not failed else 1


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from sonopacs.training.train import train_from_config
    except ModuleNotFoundError as exc:  # a third-party training dependency, never one of ours
        if exc.name and exc.name.startswith("sonopacs"):
            raise
        print(f"training needs the [train] extra ({exc.name} is missing): pip install 'sonopacs[train]'",
              file=sys.stderr)
        return 2

    train_from_config(
        Path(args.config_file), out_dir=Path(args.out) if args.out else None, device=args.device,
        overrides=args.set,
    )
    return 0


def _analyzer(args: argparse.Namespace, site: bool = True) -> object:
    """The Analyzer the settings describe (site calibration included unless ``site`` is False)."""
    from sonopacs.models.analyzer import Analyzer

    m = _settings(args).model
    weights = Path(args.weights) if args.weights else m.weights_dir
    return Analyzer.load(weights, args.device or m.device, expected_normal_fraction=m.expected_normal_fraction,
                         site_calibration=m.site_calibration if site else None, scope_gate=m.scope_gate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sonopacs.models.evaluation import evaluate_index
    from sonopacs.models.site_calibration import SiteCalibrationError

    try:
        analyzer = _analyzer(args)
    except SiteCalibrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics = evaluate_index(Path(args.index), Path(args.out), clean=not args.no_clean,
                             analyzer=analyzer)  # type: ignore[arg-type]
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}, indent=2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from sonopacs.models.calibrate_site import calibrate_index
    from sonopacs.models.site_calibration import describe

    site = calibrate_index(Path(args.index), Path(args.out), _analyzer(args, site=False), n_boot=args.bootstrap)
    print(describe(site))
    print(f"written {args.out}: set SONOPACS_MODEL__SITE_CALIBRATION={args.out} (or model.site_calibration)")
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from sonopacs.dashboard.users import add_user

    add_user(_settings(args), args.username, role=args.role, password=args.password)
    print(f"user {args.username} ({args.role}) saved")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sonopacs", description=__doc__)
    parser.add_argument("--config", help="YAML file layered over config/default.yaml")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"sonopacs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    # `--config` is accepted after the subcommand too; SUPPRESS keeps the global value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="YAML file layered over the defaults")

    sub.add_parser(
        "serve", parents=[common], help="listener + worker (+ dashboard) on the configured services"
    ).set_defaults(func=cmd_serve)
    sub.add_parser("listener", parents=[common], help="DICOM Storage/Verification SCP only").set_defaults(
        func=cmd_listener
    )
    p = sub.add_parser("worker", parents=[common], help="Celery worker")
    p.add_argument("--queues", default="clean,inference,export,control")
    p.add_argument("--concurrency", type=int, default=1)
    p.set_defaults(func=cmd_worker)
    sub.add_parser(
        "monitor", parents=[common], help="study stability monitor only (enqueues quiet studies)"
    ).set_defaults(func=cmd_monitor)
    sub.add_parser("dashboard", parents=[common], help="admin dashboard and HTTP API only").set_defaults(
        func=cmd_dashboard
    )

    p = sub.add_parser("send", parents=[common], help="C-STORE files or folders to a DICOM node")
    p.add_argument("paths", nargs="+")
    p.add_argument("--to", required=True, help="HOST:PORT")
    p.add_argument("--aet", default="SONOPACS", help="called AE title")
    p.add_argument("--calling-aet", default="SONOPACS-SCU")
    p.add_argument("--timeout", type=float, default=30)
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("echo", parents=[common], help="C-ECHO a DICOM node (default: the export destination)")
    p.add_argument("--to", help="HOST:PORT")
    p.add_argument("--aet", help="called AE title")
    p.add_argument("--timeout", type=float, default=10)
    p.set_defaults(func=cmd_echo)

    p = sub.add_parser("resend", parents=[common], help="send a study's results to the PACS again")
    p.add_argument("study_uid")
    p.set_defaults(func=cmd_resend)
    p = sub.add_parser("purge", parents=[common], help="delete what the retention policy says is due")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    p.set_defaults(func=cmd_purge)
    p = sub.add_parser("pin", parents=[common], help="keep a study from retention (or --unpin)")
    p.add_argument("study_uid")
    p.add_argument("--unpin", action="store_true")
    p.set_defaults(func=cmd_pin)
    p = sub.add_parser("reprocess", parents=[common], help="run a study's pipeline again")
    p.add_argument("study_uid")
    p.set_defaults(func=cmd_reprocess)

    p = sub.add_parser("db", parents=[common], help="database maintenance")
    dbsub = p.add_subparsers(dest="db_command", required=True)
    dbsub.add_parser("upgrade", parents=[common], help="apply Alembic migrations").set_defaults(
        func=cmd_db_upgrade
    )

    p = sub.add_parser("config", parents=[common], help="configuration")
    csub = p.add_subparsers(dest="config_command", required=True)
    csub.add_parser("show", parents=[common], help="print effective settings, secrets masked").set_defaults(
        func=cmd_config_show
    )

    p = sub.add_parser("analyze", parents=[common], help="analyze PNG/JPEG/DICOM files (research use)")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("train", help="train a model from a recorded config")
    p.add_argument("config_file", nargs="?", help="models/configs/NAME.yaml")
    # here --config names the training recipe (the contract in docs/architecture.md)
    p.add_argument("--config", dest="train_config", help="models/configs/NAME.yaml")
    p.add_argument("--out", help="output folder (default: from the config)")
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, recorded in the manifest (e.g. train.epochs=31)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[common], help="evaluate the shipped model on an index CSV")
    p.add_argument("--index", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--weights", help="weights folder (default: shipped)")
    p.add_argument("--no-clean", action="store_true")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: model.device)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", parents=[common],
                       help="fit a site calibration on the hospital's own labelled images (before go-live)")
    p.add_argument("--index", required=True, help="index CSV (image,label,mask), ~50+ images, ~150 recommended")
    p.add_argument("--out", required=True, help="site calibration file to write (JSON)")
    p.add_argument("--weights", help="weights folder (default: model.weights_dir, else shipped)")
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: model.device)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("user", parents=[common], help="dashboard users")
    usub = p.add_subparsers(dest="user_command", required=True)
    pu = usub.add_parser("add", parents=[common], help="add or update a user")
    pu.add_argument("username")
    pu.add_argument("--role", choices=["viewer", "admin"], default="viewer")
    pu.add_argument("--password", help="default: prompt")
    pu.set_defaults(func=cmd_user_add)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        # `sonopacs train --config FILE` (the contract); `sonopacs --config FILE train` also works.
        args.config_file = args.config_file or args.train_config or args.config
        args.config = None
        if args.config_file is None:
            parser.error("train needs a config: sonopacs train --config models/configs/NAME.yaml")
    from sonopacs.config.logs import configure_logging

    configure_logging(logging.DEBUG if args.verbose else logging.INFO)  # warnings captured, PHI redacted
    from sonopacs.config.settings import ConfigError

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"sonopacs: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
