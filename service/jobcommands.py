"""``jobs list``, ``jobs show N`` and ``inventory export``: parse, query, print.

The queries are ``service.jobquery``'s, the formats ``service.jobreport``'s. Output goes to stdout
(or ``--output``) and logs to stderr (errors only, unless ``LOG_LEVEL=DEBUG``), so a JSON or CSV
export is never mixed with log lines. A pipeline database that cannot be reached is one line and
exit 1, naming the error's type only: its text can carry the host and user, and no command prints
a database URL.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TextIO

import psycopg2

from service.config import Settings
from service.errors import ERROR_CODES
from service.jobquery import STATUSES, JobFilter, JobQueries, StuckRule
from service.jobreport import (
    next_steps,
    write_inventory_csv,
    write_inventory_json,
    write_job_json,
    write_job_table,
    write_job_text,
    write_jobs_json,
)
from service.logs import configure_logging
from service.timeargs import duration_type, since_type

Clock = Callable[[], datetime]
_STATUS_BY_SPELLING = {status.lower().replace(" ", "-"): status for status in STATUSES}


def register_job_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], clock: Clock = lambda: datetime.now(UTC)
) -> None:
    """Add ``jobs (list | show)`` and ``inventory export`` to the CLI's subcommands."""
    jobs = commands.add_parser(
        "jobs",
        help="list jobs, find stuck ones, show one job in full",
        description="Read-only views of the pipeline jobs (the tracking database).",
    )
    actions = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="list jobs, newest first",
        description="List jobs, newest first. Filters combine (all must hold).",
    )
    listing.add_argument(
        "--status", type=_status, help="Started, 'In Progress' (or in-progress), Completed, Failed"
    )
    listing.add_argument("--since", type=since_type(clock), help="created since: 7d, 24h, 90m or a UTC date")
    listing.add_argument("--pipeline", metavar="CODE", help="only this pipeline's jobs")
    listing.add_argument(
        "--code", type=_error_code, help="jobs with this error code (the job's or any error row's)"
    )
    listing.add_argument(
        "--stuck",
        action="store_true",
        help="unsettled jobs with no live lease, untouched for longer than a retry or replica-lag wait "
        "would take: max(RETRY_BACKOFF_MAX_S, REPLICA_LAG_INTERVAL_S) + 2 * VISIBILITY_TIMEOUT_S",
    )
    listing.add_argument(
        "--older-than",
        type=duration_type,
        metavar="DURATION",
        help="with --stuck: this threshold instead (e.g. 2h)",
    )
    listing.add_argument(
        "--limit", type=_positive, default=50, metavar="N", help="at most N jobs (default 50)"
    )
    listing.add_argument("--format", choices=("table", "json"), default="table")
    listing.set_defaults(run=partial(_run_list, clock=clock), parser=listing)

    show = actions.add_parser(
        "show",
        help="one job in full: source, EDC ids, quarantine, integrity, series, errors, next step",
        description="Show job N (its pipeline_file_id) and what an admin can do next.",
    )
    show.add_argument("job_id", type=_positive, metavar="N")
    show.add_argument("--format", choices=("text", "json"), default="text")
    show.set_defaults(run=partial(_run_show, clock=clock))

    inventory = commands.add_parser(
        "inventory",
        help="export the image inventory (pipelines, files, series)",
        description="The image inventory as a data export.",
    )
    inventory_actions = inventory.add_subparsers(dest="inventory_command", required=True, metavar="ACTION")
    export = inventory_actions.add_parser(
        "export",
        help="write the inventory as CSV (one row per series) or JSON",
        description="Write every file and its series, oldest first. CSV: one row per series, the file's "
        "columns repeated (a file without series: one row, series columns empty). JSON: "
        '{"generated_at", "pipelines": [...], "files": [{..., "series": [...]}]}. Streams.',
    )
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--since", type=since_type(clock), help="files created since: 7d, 24h or a UTC date")
    export.add_argument("--pipeline", metavar="CODE", help="only this pipeline's files")
    export.add_argument("--output", type=Path, metavar="FILE", help="write here instead of stdout")
    export.set_defaults(run=partial(_run_export, clock=clock))


def _status(text: str) -> str:
    status = _STATUS_BY_SPELLING.get("-".join(text.lower().replace("_", " ").replace("-", " ").split()))
    if status is None:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(STATUSES)}, got {text!r}")
    return status


def _error_code(text: str) -> str:
    code = text.strip().upper()
    if code not in ERROR_CODES:
        raise argparse.ArgumentTypeError(f"unknown error code {text!r} (see the README's error codes)")
    return code


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class _UnreachableError(Exception):
    """The pipeline database could not be reached (the message names the error type)."""


@contextmanager
def _queries(settings: Settings) -> Iterator[JobQueries]:
    from service.db import Database

    settings.require("PIPELINE_DATABASE_URL")
    assert settings.pipeline_database_url
    # Logs go to stderr (stdout carries the report), errors only unless LOG_LEVEL=DEBUG: an
    # unreachable database is the one line below, not that line after a retry warning per attempt.
    level = "DEBUG" if settings.log_level == "DEBUG" else "ERROR"
    configure_logging(level, settings.log_format, stream=sys.stderr)
    try:
        db = Database(settings.pipeline_database_url, max_connections=1, read_only=True)
    except psycopg2.OperationalError as exc:
        raise _UnreachableError(type(exc).__name__) from None
    try:
        yield JobQueries(db)
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        raise _UnreachableError(type(exc).__name__) from None
    finally:
        db.close()


def _guarded(body: Callable[[JobQueries], int], settings: Settings) -> int:
    try:
        with _queries(settings) as queries:
            return body(queries)
    except _UnreachableError as exc:
        print(f"cannot reach the pipeline database ({exc})", file=sys.stderr)
        return 1


def _known_pipeline(queries: JobQueries, code: str | None) -> bool:
    if code is None or any(p.code == code for p in queries.pipelines()):
        return True
    known = ", ".join(p.code for p in queries.pipelines()) or "none"
    print(f"error: no pipeline {code!r} (registered: {known})", file=sys.stderr)
    return False


def _run_list(args: argparse.Namespace, settings: Settings, clock: Clock) -> int:
    if args.older_than is not None and not args.stuck:
        args.parser.error("--older-than only applies with --stuck")
    stuck = StuckRule.from_settings(settings, clock(), args.older_than) if args.stuck else None
    wanted = JobFilter(args.status, args.since, args.pipeline, args.code, stuck, args.limit)

    def body(queries: JobQueries) -> int:
        if not _known_pipeline(queries, args.pipeline):
            return 1
        jobs = queries.list_jobs(wanted)
        (write_jobs_json if args.format == "json" else write_job_table)(jobs, sys.stdout, stuck)
        return 0

    return _guarded(body, settings)


def _run_show(args: argparse.Namespace, settings: Settings, clock: Clock) -> int:
    def body(queries: JobQueries) -> int:
        job = queries.job(args.job_id)
        if job is None:
            print(f"error: no job {args.job_id}", file=sys.stderr)
            return 1
        rule = StuckRule.from_settings(settings, clock())
        steps = next_steps(job, rule)
        if args.format == "json":
            write_job_json(job, steps, rule.applies(job.status, job.lease_until, job.updated_at), sys.stdout)
        else:
            write_job_text(job, steps, sys.stdout)
        return 0

    return _guarded(body, settings)


def _run_export(args: argparse.Namespace, settings: Settings, clock: Clock) -> int:
    def body(queries: JobQueries) -> int:
        if not _known_pipeline(queries, args.pipeline):
            return 1
        files = queries.inventory(since=args.since, pipeline_code=args.pipeline)
        with _destination(args.output) as out:
            if args.format == "json":
                pipelines = [p for p in queries.pipelines() if args.pipeline in (None, p.code)]
                write_inventory_json(pipelines, files, clock(), out)
            else:
                write_inventory_csv(files, out)
        return 0

    if args.output is not None and not args.output.parent.is_dir():
        print(f"error: no such directory {args.output.parent}", file=sys.stderr)
        return 1
    return _guarded(body, settings)


@contextmanager
def _destination(path: Path | None) -> Iterator[TextIO]:
    """stdout, or ``path`` written beside it and renamed into place only once complete (an export
    cut short by a lost connection leaves no half file under the final name)."""
    if path is None:
        yield sys.stdout
        return
    partial_path = path.with_name(path.name + ".part")
    try:
        with open(partial_path, "w", encoding="utf-8", newline="") as out:
            yield out
        partial_path.replace(path)
    finally:
        partial_path.unlink(missing_ok=True)
