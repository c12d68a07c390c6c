"""``python -m service COMMAND``: parses arguments, builds what the command needs, delegates."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from service.config import Settings
from service.digestcommand import register_digest_command
from service.errors import ConfigError, PermanentError
from service.jobcommands import register_job_commands
from service.logs import configure_logging
from service.redrive import register_redrive_command
from service.reprocess import add_command as add_reprocess_command

if TYPE_CHECKING:
    from service.fingerprint import Fingerprint

log = structlog.get_logger()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; return its exit code (2 for a configuration error)."""
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        return int(args.run(args, settings))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `jobs list | head`: the reader has gone; no traceback for that. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="EDC image pipeline: stamps a tracking UID into DICOM uploads and copies them "
        "to the imaging labs' quarantine. Configuration comes from the environment (see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser(
        "worker",
        help="consume the S3 event queue until SIGTERM",
        description="Long-running worker: receive -> process -> settle.",
    )
    worker.set_defaults(run=_run_worker)

    health = commands.add_parser(
        "health",
        help="exit 0 while the worker loop makes progress (the container's health check)",
        description="Read the worker's heartbeat file (HEARTBEAT_FILE): exit 0 when the loop "
        "touched it within the last 120 s, else 1 with one line saying why.",
    )
    health.set_defaults(run=_run_health)

    migrate = commands.add_parser(
        "migrate",
        help="apply pending pipeline database migrations",
        description="Create/upgrade the `pipeline` schema (idempotent).",
    )
    migrate.set_defaults(run=_run_migrate)

    pipelines = commands.add_parser(
        "pipelines",
        help="register or list pipelines",
        description="Pipelines choose which ddfile names are processed.",
    )
    pipeline_commands = pipelines.add_subparsers(dest="pipelines_command", required=True, metavar="ACTION")
    add = pipeline_commands.add_parser(
        "add",
        help="register a pipeline (or add ddfile names to it)",
        description="Register a pipeline and the ddfile names it handles.",
    )
    add.add_argument("code", help="short code, e.g. IMAGING (used in error-log paths)")
    add.add_argument("--label", required=True, help="human-readable name")
    add.add_argument(
        "--ddfile",
        action="append",
        required=True,
        dest="ddfiles",
        help="an EDC ddfile name this pipeline handles (repeatable; may contain spaces)",
    )
    add.add_argument(
        "--kind",
        choices=("dicom", "copy"),
        help="dicom: stamp the ATRIUID (the default for a new pipeline); copy: place files in "
        "quarantine unchanged (audio, PDF...). Given for an existing pipeline, changes its kind.",
    )
    add.set_defaults(run=_run_pipelines_add)
    listing = pipeline_commands.add_parser(
        "list", help="list pipelines and their ddfile names", description="List registered pipelines."
    )
    listing.set_defaults(run=_run_pipelines_list)
    register_job_commands(commands)

    stamp = commands.add_parser(
        "stamp",
        help="stamp a local DICOM file or zip by hand and print its series",
        description="Process IN (a DICOM file or a zip of DICOM files) into OUT, writing "
        "PREFIX.N as the tracking UID of the N-th series, and print the series found.",
    )
    stamp.add_argument("input", type=Path, metavar="IN")
    stamp.add_argument("output", type=Path, metavar="OUT")
    stamp.add_argument("--prefix", default="0", help="ATRIUID prefix (default 0: PREFIX.1, PREFIX.2...)")
    stamp.add_argument(
        "--no-checksums",
        action="store_true",
        help="skip the SHA-256 of IN and OUT (two passes over the data, slower than the stamping)",
    )
    stamp.set_defaults(run=_run_stamp)

    local = commands.add_parser(
        "local",
        help="run the embedded stack (moto server + throwaway PostgreSQL) with a demo",
        description="Start moto's S3/SQS/SNS server and a throwaway PostgreSQL, provision and "
        "seed them, start the worker, upload sample DICOM files and print what reached "
        "quarantine. Keeps running until Ctrl-C unless --once is given.",
    )
    local.add_argument("--once", action="store_true", help="exit after the demo table")
    local.add_argument("--no-demo", action="store_true", help="start the stack without uploading samples")
    local.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the demo jobs")
    local.set_defaults(run=_run_local)

    register_digest_command(commands)
    register_redrive_command(commands)
    add_reprocess_command(commands)
    return parser


def _run_worker(_args: argparse.Namespace, settings: Settings) -> int:
    from service.app import build_worker

    try:
        app = build_worker(settings)
    except RuntimeError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    install_stop_handlers(app.worker.stop)
    try:
        app.worker.run()
    finally:
        app.close()
    if app.worker.stats.abandoned:
        # The pool's threads still inside abandoned jobs would hold the interpreter's exit
        # until their downloads end; their messages and job leases are released already.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def _run_health(_args: argparse.Namespace, settings: Settings) -> int:
    from service.liveness import check_health

    healthy, line = check_health(settings.heartbeat_file)
    print(line, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def install_stop_handlers(stop: object) -> None:
    """SIGTERM/SIGINT ask ``stop()`` once; a second signal exits at once (status 130)."""
    assert callable(stop)
    signalled = {"count": 0}

    def handle(signum: int, _frame: FrameType | None) -> None:
        signalled["count"] += 1
        if signalled["count"] > 1:
            os._exit(130)
        log.info("worker.stop_requested", signal=signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def _run_migrate(_args: argparse.Namespace, settings: Settings) -> int:
    from service.db import Database
    from service.migrate import migrate

    settings.require("PIPELINE_DATABASE_URL")
    assert settings.pipeline_database_url
    db = Database(settings.pipeline_database_url, max_connections=1)
    try:
        applied = migrate(db)
    finally:
        db.close()
    print(f"applied migrations {applied}" if applied else "pipeline database is up to date")
    return 0


def _tracking(settings: Settings) -> object:
    from service.db import Database
    from service.tracking import TrackingStore

    settings.require("PIPELINE_DATABASE_URL")
    assert settings.pipeline_database_url
    return TrackingStore(Database(settings.pipeline_database_url, max_connections=1))


def _run_pipelines_add(args: argparse.Namespace, settings: Settings) -> int:
    from service.tracking import TrackingStore

    store = _tracking(settings)
    assert isinstance(store, TrackingStore)
    try:
        pipeline = store.add_pipeline(args.code, args.label, args.ddfiles, args.kind)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"pipeline {pipeline.code} (id {pipeline.id}, {pipeline.kind}) handles: {', '.join(pipeline.ddfiles)}"
    )
    return 0


def _run_pipelines_list(_args: argparse.Namespace, settings: Settings) -> int:
    from service.tracking import TrackingStore

    store = _tracking(settings)
    assert isinstance(store, TrackingStore)
    rows = store.list_pipelines()
    print(f"{'id':>4}  {'code':<16} {'kind':<6} {'enabled':<8} {'label':<28} ddfiles")
    for p in rows:
        enabled = "yes" if p.enabled else "no"
        print(f"{p.id:>4}  {p.code:<16} {p.kind:<6} {enabled:<8} {p.label:<28} {', '.join(p.ddfiles)}")
    return 0


def _run_stamp(args: argparse.Namespace, settings: Settings) -> int:
    from service.s3io import file_fingerprint

    if not args.input.is_file():
        print(f"error: no such file {args.input}", file=sys.stderr)
        return 1
    # The input's SHA-256 (for the integrity record below) on a second core while the file is
    # stamped: on a large file the two hashes cost more than the stamping itself.
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stamp-hash")
    input_print = None if args.no_checksums else hashing.submit(file_fingerprint, args.input)
    try:
        return _stamp_and_report(args, settings, input_print)
    finally:
        hashing.shutdown(wait=True)


def _stamp_and_report(
    args: argparse.Namespace, settings: Settings, input_print: Future[Fingerprint] | None
) -> int:
    from service.processors import process_upload
    from service.processors.base import SeriesKey, SeriesSummary, ZipLimits
    from service.processors.directory import member_label
    from service.s3io import file_fingerprint

    atri: dict[SeriesKey, str] = {}

    def allocate(series: Sequence[SeriesSummary]) -> dict[SeriesKey, str]:
        atri.update({s.key: f"{args.prefix}.{n}" for n, s in enumerate(series, start=1)})
        return atri

    try:
        result = process_upload(
            args.input,
            args.output,
            allocate,
            tracking_tag=settings.dicom_tracking_tag,
            # The worker's limits, so an operator's check answers as the worker would.
            limits=ZipLimits(
                settings.zip_max_members, settings.zip_max_expanded_bytes, settings.zip_max_ratio
            ),
            work_dir=settings.work_dir,
            max_in_memory_bytes=settings.max_in_memory_bytes,
        )
    except PermanentError as exc:
        print(f"{exc.code}: {exc.message}", file=sys.stderr)
        return 1
    print(f"{'ATRIUID':<12} {'series':>6} {'instances':>9}  study UID / series UID")
    for s in result.series:
        number = "" if s.series_number is None else str(s.series_number)
        print(
            f"{atri[s.key]:<12} {number:>6} {s.number_of_instances:>9}  "
            f"{s.key.study_uid} / {s.key.series_uid}"
        )
    for issue in result.issues:  # by position, as in the worker's reports: names can carry PHI
        where = member_label(issue.position, issue.member) if issue.position else "file"
        print(f"{issue.code} {where}: {issue.message}")
    print(
        f"{result.instances_stamped} instance(s) stamped, {result.members} member(s), "
        f"{result.fallbacks} full rewrite(s); written to {args.output}"
    )
    if input_print is None:
        return 0
    # The integrity record, as the job row and the quarantine object's metadata carry it.
    for label, found in (("input", input_print.result()), ("output", file_fingerprint(args.output))):
        print(f"{label}: {found.size} bytes, sha256 {found.sha256}")
    return 0


def _run_local(args: argparse.Namespace, settings: Settings) -> int:
    from service.local.demo import run_local

    return run_local(settings, once=args.once, demo=not args.no_demo, timeout_s=args.timeout)
