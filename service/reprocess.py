"""The ``reprocess`` command: run files again through the worker (CONTRACT sections 4 and 8).

A reprocess is a new execution of a job's file: a new ``edc_pipeline_file`` row (``reprocess_of``
the earlier job, its own id and so its own quarantine name), created first, then one queue message
that names it. A job is reprocessed at most once (a unique index), so repeating a request makes no
second execution. Two kinds of job are resumed in place instead (no new row, the same quarantine
object): a job Failed only because its deliveries ran out (ERRL8003), and a Started / In Progress
job whose lease has run out or was never taken (stuck). A job with a live lease is running and is
skipped. With ``--prefix``, an object that has no job at all gets the S3 event S3 would have sent.

Nothing here processes a file: the worker does, from the messages sent here, exactly as for S3's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TextIO
from urllib.parse import quote_plus

from service.config import Settings
from service.events import ObjectCreated, reprocess_message
from service.keys import ddfile_name_of
from service.s3io import ListedObject, ObjectStore
from service.sqs import MAX_BATCH, Queue
from service.timeargs import since_type
from service.tracking import EXHAUSTED_CODE, FAILED, IN_PROGRESS, STARTED, StoredJob, TrackingStore

Clock = Callable[[], datetime]

PROGRESS_EVERY = 500  # objects listed between two progress lines of --prefix
PROGRESS_INTERVAL_S = 2.0  # ... or seconds, whichever comes first


class Action(StrEnum):
    """What the command does for one selected job or object."""

    NEW_EXECUTION = "new-execution"  # a new row reprocessing the job, and its message
    RESUME = "resume"  # a message for the job itself (ERRL8003, or stuck)
    RESEND = "resend"  # the job's reprocess exists but never ran: its message again
    FIRST_JOB = "first-job"  # an object with no job: the S3 event, so the worker creates it
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Step:
    """One planned action: on ``job`` (None for an object without one), running ``target``."""

    action: Action
    job: StoredJob | None
    reason: str = ""
    target: StoredJob | None = None  # the execution the message runs (RESUME, RESEND)
    listed: ListedObject | None = None  # FIRST_JOB: the object
    bucket: str = ""  # FIRST_JOB: its bucket


def plan(job: StoredJob, existing: StoredJob | None, now: datetime) -> Step:
    """What reprocessing ``job`` means, given the execution reprocessing it already (if any)."""
    if job.status in (STARTED, IN_PROGRESS):
        if job.lease_until is not None and job.lease_until > now:
            until = job.lease_until.astimezone(UTC).isoformat(timespec="seconds")
            return Step(Action.SKIP, job, f"running ({job.status}, lease until {until})")
        return Step(Action.RESUME, job, f"{job.status} with no live lease (stuck)", target=job)
    if job.status == FAILED and job.error_code == EXHAUSTED_CODE:
        return Step(Action.RESUME, job, f"{FAILED} {EXHAUSTED_CODE} (deliveries ran out)", target=job)
    if existing is not None:
        done = f"job {job.id} was already reprocessed as job {existing.id} ({existing.status})"
        if existing.status == STARTED and existing.attempts == 0 and existing.lease_until is None:
            return Step(Action.RESEND, job, f"{done}, not run yet: its message is sent again", existing)
        return Step(Action.SKIP, job, f"{done}; to run the file again, reprocess job {existing.id}")
    return Step(Action.NEW_EXECUTION, job)


def first_job_event(bucket: str, listed: ListedObject, now: datetime) -> dict[str, Any]:
    """The S3 ObjectCreated notification for an object with no job, naming its exact version."""
    obj: dict[str, Any] = {"key": quote_plus(listed.key, safe="/"), "size": listed.size}
    if listed.etag:
        obj["eTag"] = listed.etag
    if listed.version_id:
        obj["versionId"] = listed.version_id
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "s3": {"bucket": {"name": bucket}, "object": obj},
            }
        ]
    }


def execution_source(job: StoredJob, now: datetime) -> ObjectCreated:
    """The object version ``job`` runs on, naming the job (the reprocess message's content)."""
    version_id, etag = job.exact_version
    return ObjectCreated(job.bucket, job.key, version_id, etag, job.size, now, job_id=job.id)


@dataclass(slots=True)
class Summary:
    """What one run did, counted."""

    new_executions: int = 0
    resumed: int = 0
    resent: int = 0
    first_jobs: int = 0
    skipped: int = 0
    failed_sends: int = 0
    unknown: int = 0
    listed: int = 0

    @property
    def queued(self) -> int:
        return self.new_executions + self.resumed + self.resent + self.first_jobs

    @property
    def exit_code(self) -> int:
        return 1 if self.failed_sends or self.unknown else 0

    def line(self, *, dry_run: bool) -> str:
        what = "would queue" if dry_run else "queued"
        return (
            f"{what}: {self.new_executions} new execution(s), {self.resumed} resumed, "
            f"{self.resent} re-sent, {self.first_jobs} first job(s); skipped {self.skipped}; "
            f"failed sends {self.failed_sends}" + ("; dry run: nothing changed" if dry_run else "")
        )


@dataclass(slots=True)
class _Pending:
    step: Step
    body: str
    line: str


@dataclass(slots=True)
class Reprocessor:
    """Plans and carries out one ``reprocess`` request. Prints one line per job or object to
    ``out``; with ``dry_run`` it writes no row and sends no message."""

    tracking: TrackingStore
    queue: Queue
    clock: Clock
    out: TextIO
    dry_run: bool = False
    pipeline_code: str | None = None
    summary: Summary = field(default_factory=Summary, init=False)
    _batch: list[_Pending] = field(default_factory=list, init=False)  # waiting to be sent
    _pipelines: dict[str, str | None] = field(default_factory=dict, init=False)  # ddfile -> code

    def run_file_id(self, job_id: int) -> Summary:
        """``--file-id``: one job by its pipeline_file_id (exit code 1 when there is none)."""
        job = self.tracking.stored_job(job_id)
        if job is None:
            self.summary.unknown += 1
            print(f"job {job_id}: unknown (no such pipeline_file_id)", file=self.out)
            return self.summary
        return self.run_jobs([job])

    def run_jobs(self, jobs: Iterable[StoredJob]) -> Summary:
        """Each job as ``--file-id`` would treat it (``--status`` hands its selection here)."""
        for job in jobs:
            self._take(self._plan_job(job))
        self._flush()
        return self.summary

    def run_prefix(
        self,
        store: ObjectStore,
        bucket: str,
        prefix: str,
        progress: TextIO,
        *,
        every: int = PROGRESS_EVERY,
        interval_s: float = PROGRESS_INTERVAL_S,
    ) -> Summary:
        """``--prefix``: every current object under ``prefix``: its first job as ``--file-id``
        would treat it, or, with no job, a first job. A progress line goes to ``progress`` every
        ``every`` objects or ``interval_s`` seconds, and at the end."""
        last = time.monotonic()
        for listed in store.list_objects(bucket, prefix):
            self.summary.listed += 1
            self._take(self._plan_object(bucket, listed))
            if self.summary.listed % every == 0 or time.monotonic() - last >= interval_s:
                self._progress(progress)
                last = time.monotonic()
        self._flush()
        self._progress(progress, done=True)
        return self.summary

    # -- planning --------------------------------------------------------------------------
    def _plan_job(self, job: StoredJob) -> Step:
        if self.pipeline_code is not None and job.pipeline_code != self.pipeline_code:
            return Step(Action.SKIP, job, f"pipeline {job.pipeline_code}, not {self.pipeline_code}")
        settled = job.status not in (STARTED, IN_PROGRESS)
        return plan(job, self.tracking.reprocess_of(job.id) if settled else None, self.clock())

    def _plan_object(self, bucket: str, listed: ListedObject) -> Step:
        version = listed.version_id or listed.etag or ""
        job = self.tracking.first_execution(bucket, listed.key, version)
        if job is not None:
            return self._plan_job(job)
        ddfile = ddfile_name_of(listed.key)
        if ddfile is None:
            return Step(Action.SKIP, None, "the key fits no source layout", listed=listed)
        if ddfile not in self._pipelines:
            handling = self.tracking.pipeline_for_ddfile(ddfile)
            self._pipelines[ddfile] = handling.code if handling else None
        code = self._pipelines[ddfile]
        if code is None:
            return Step(Action.SKIP, None, "no enabled pipeline handles its ddfile", listed=listed)
        if self.pipeline_code is not None and code != self.pipeline_code:
            return Step(Action.SKIP, None, f"pipeline {code}, not {self.pipeline_code}", listed=listed)
        return Step(Action.FIRST_JOB, None, "no job yet", listed=listed, bucket=bucket)

    # -- doing -----------------------------------------------------------------------------
    def _take(self, step: Step) -> None:
        if step.action is Action.SKIP:
            self.summary.skipped += 1
            print(f"{_subject(step)}: skip: {step.reason}{_where(step)}", file=self.out)
            return
        if self.dry_run:
            self._count(step)
            target = f" -> job {step.target.id}" if step.target else ""
            reason = f": {step.reason}" if step.reason else ""
            print(f"{_subject(step)}: {step.action}{target}{reason} (dry run){_where(step)}", file=self.out)
            return
        now = self.clock()
        if step.action is Action.NEW_EXECUTION:
            assert step.job is not None
            execution, created = self.tracking.create_reprocess(step.job, now)
            if not created:  # another request made it meanwhile: treat the job as reprocessed
                self._take(plan(step.job, execution, now))
                return
            step = Step(Action.NEW_EXECUTION, step.job, step.reason, execution)
        if step.action is Action.FIRST_JOB:
            assert step.listed is not None
            body = json.dumps(first_job_event(step.bucket, step.listed, now))
        else:
            assert step.target is not None
            body = json.dumps(reprocess_message(execution_source(step.target, now)))
        target = f" -> job {step.target.id}" if step.target else ""
        reason = f": {step.reason}" if step.reason else ""
        self._batch.append(_Pending(step, body, f"{_subject(step)}: {step.action}{target}{reason}"))
        if len(self._batch) == MAX_BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        failed = set(self.queue.send_batch([pending.body for pending in batch]))
        for n, pending in enumerate(batch):
            where = _where(pending.step)
            if n not in failed:
                self._count(pending.step)
                print(f"{pending.line}{where}", file=self.out)
                continue
            self.summary.failed_sends += 1
            print(f"{pending.line}: SEND FAILED{_after_failed_send(pending.step)}{where}", file=self.out)

    def _count(self, step: Step) -> None:
        counters = {
            Action.NEW_EXECUTION: "new_executions",
            Action.RESUME: "resumed",
            Action.RESEND: "resent",
            Action.FIRST_JOB: "first_jobs",
        }
        name = counters[step.action]
        setattr(self.summary, name, getattr(self.summary, name) + 1)

    def _progress(self, stream: TextIO, *, done: bool = False) -> None:
        s = self.summary
        label = "done" if done else "progress"
        print(
            f"reprocess {label}: listed {s.listed}, queued {s.queued}, skipped {s.skipped}, "
            f"failed sends {s.failed_sends}",
            file=stream,
            flush=True,
        )


def _subject(step: Step) -> str:
    return f"job {step.job.id}" if step.job is not None else "no job"


def _where(step: Step) -> str:
    """The source key (not PHI: the logs carry it too)."""
    key = step.job.key if step.job is not None else step.listed.key if step.listed else ""
    return f" [{key}]" if key else ""


def _after_failed_send(step: Step) -> str:
    if step.action is Action.NEW_EXECUTION and step.target is not None:
        return (
            f" (job {step.target.id} stays Started with no lease; running the same command again "
            "sends its message)"
        )
    return " (nothing changed; running the same command again sends it)"


# -- the command -------------------------------------------------------------------------------
_DESCRIPTION = """\
Run files again. A reprocess is a new execution of a job's file: a new job row (reprocess_of =
the earlier job, its own pipeline_file_id and quarantine name), then one queue message for the
worker. A job is reprocessed at most once: repeating a request makes no second execution (to run
the file again after that, reprocess the newer job). Resumed in place instead (the same job, no
new row): a job Failed with ERRL8003 (deliveries ran out) and a Started / In Progress job whose
lease has expired (stuck). A job with a live lease is running and is skipped. --prefix lists the
source bucket (SOURCE_BUCKET) and treats each object's first job as --file-id would; an object
with no job gets the S3 event S3 would have sent. Needs PIPELINE_DATABASE_URL and
PIPELINE_QUEUE_URL. Exit 0 done, 1 some sends failed or --file-id unknown, 2 usage/config."""


def add_command(commands: Any) -> None:
    """Register ``reprocess`` on the CLI's subparsers."""
    parser = commands.add_parser(
        "reprocess",
        help="run files again: new executions of their jobs, or resume stuck / exhausted ones",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    select = parser.add_mutually_exclusive_group(required=True)
    select.add_argument("--file-id", type=int, metavar="N", help="the job (pipeline_file_id) N")
    select.add_argument("--prefix", metavar="P", help="every object under P in SOURCE_BUCKET")
    select.add_argument("--status", choices=[FAILED], help="jobs Failed and not reprocessed yet")
    parser.add_argument("--code", metavar="C", help="with --status: only jobs with error code C")
    parser.add_argument(
        "--since", type=since_type(), metavar="D", help="with --status: created since D (7d, 24h, a date)"
    )
    parser.add_argument("--pipeline", metavar="CODE", help="only jobs (and objects) of pipeline CODE")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    parser.set_defaults(run=run_command)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """Build what the request needs, carry it out, print the summary; return the exit code."""
    from service.app import aws_client, utc_now
    from service.db import Database

    if args.status is None and (args.code is not None or args.since is not None):
        print("usage error: --code and --since go with --status Failed", file=sys.stderr)
        return 2
    settings.require("PIPELINE_DATABASE_URL", "PIPELINE_QUEUE_URL")
    if args.prefix is not None:
        settings.require("SOURCE_BUCKET")
    assert settings.pipeline_database_url and settings.pipeline_queue_url
    db = Database(settings.pipeline_database_url, max_connections=1)
    try:
        tracking = TrackingStore(db)
        if args.pipeline is not None and tracking.pipeline_by_code(args.pipeline) is None:
            print(f"usage error: no pipeline {args.pipeline}", file=sys.stderr)
            return 2
        queue = Queue(aws_client(settings, "sqs"), settings.pipeline_queue_url)
        run = Reprocessor(tracking, queue, utc_now, sys.stdout, args.dry_run, args.pipeline)
        if args.file_id is not None:
            summary = run.run_file_id(args.file_id)
        elif args.prefix is not None:
            assert settings.source_bucket
            store = ObjectStore(aws_client(settings, "s3"))
            summary = run.run_prefix(store, settings.source_bucket, args.prefix, sys.stderr)
        else:
            summary = run.run_jobs(tracking.failed_jobs(args.code, args.since, args.pipeline))
    finally:
        db.close()
    print(summary.line(dry_run=args.dry_run))
    return summary.exit_code
