"""The digest's facts, read from the pipeline database (and the DLQ's depth from SQS).

Codes, ids, counts, UIDs and quarantine names only: the participant code, event and EDC names
are never selected on their own (the quarantine name, the labs' own file name, carries the
participant code, a pseudonym). Everything is one read-only transaction, so the figures agree
with one another. Database errors propagate; an SQS error leaves the DLQ depth unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from service.digestwindow import DigestWindow
from service.errors import ERROR_CODES
from service.jobquery import JobFilter, JobQueries, JobSummary, StuckRule
from service.tracking import COMPLETED, FAILED, STARTED

if TYPE_CHECKING:
    from service.db import Database
    from service.sqs import Queue

log = structlog.get_logger()

STUCK_LIMIT = 200  # more stuck jobs than this is an incident; the digest says "N or more"


@dataclass(frozen=True, slots=True)
class QuarantinedFile:
    """A file that reached quarantine in the window."""

    job_id: int
    pipeline_code: str
    quarantine_key: str
    series: int
    instances: int
    atri_uids: tuple[str, ...]
    size: int | None  # bytes of the quarantine object
    problem_codes: tuple[str, ...]  # empty unless it is in quarantine with a problem
    completed_at: datetime


@dataclass(frozen=True, slots=True)
class PipelineCounts:
    """One pipeline's figures for the window."""

    code: str
    label: str
    received: int  # jobs created in the window
    quarantined: int  # reached quarantine in the window (with or without a problem)
    with_problems: int
    failed: int


@dataclass(frozen=True, slots=True)
class FailureCount:
    """Jobs that failed in the window with one code."""

    code: str
    meaning: str
    count: int
    job_ids: tuple[int, ...]  # oldest first


@dataclass(frozen=True, slots=True)
class WaitingJob:
    """A job whose file has no EDC record yet (replica lag): it runs by itself once it appears."""

    job_id: int
    pipeline_code: str
    created_at: datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class DigestFacts:
    """Everything a digest says, for one window and scope."""

    window: DigestWindow
    pipeline_code: str | None  # --pipeline, or None for all
    generated_at: datetime
    files: tuple[QuarantinedFile, ...]
    pipelines: tuple[PipelineCounts, ...]
    failures: tuple[FailureCount, ...]
    waiting: tuple[WaitingJob, ...]
    stuck: tuple[JobSummary, ...]
    dlq_depth: int | None  # None: not configured or SQS did not answer

    @property
    def problems(self) -> tuple[QuarantinedFile, ...]:
        """The files in quarantine with a problem."""
        return tuple(f for f in self.files if f.problem_codes)

    @property
    def failed_total(self) -> int:
        return sum(f.count for f in self.failures)

    @property
    def instances_total(self) -> int:
        return sum(f.instances for f in self.files)

    @property
    def series_total(self) -> int:
        return sum(f.series for f in self.files)

    @property
    def bytes_total(self) -> int:
        return sum(f.size or 0 for f in self.files)


_FILES_SQL = """
SELECT f.id, p.code, f.destination_key,
       count(d.id), coalesce(sum(d.number_of_instances), 0),
       coalesce(array_agg(d.atri_uid ORDER BY d.id) FILTER (WHERE d.id IS NOT NULL), '{}'),
       f.quarantine_bytes, f.has_error,
       (SELECT coalesce(array_agg(DISTINCT e.error_code), '{}') FROM pipeline.edc_pipeline_error e
         WHERE e.edc_pipeline_file_id = f.id),
       f.error_code, f.completed_at
  FROM pipeline.edc_pipeline_file f
  JOIN pipeline.edc_pipeline p ON p.id = f.edc_pipeline_id
  LEFT JOIN pipeline.edc_pipeline_file_dicom d ON d.edc_pipeline_file_id = f.id
 WHERE f.status = %(completed)s AND f.completed_at >= %(start)s AND f.completed_at < %(end)s
   AND (%(pipeline)s::text IS NULL OR p.code = %(pipeline)s::text)
 GROUP BY f.id, p.code
 ORDER BY p.code, f.completed_at, f.id
"""
_PIPELINES_SQL = """
SELECT p.code, p.label,
       count(f.id) FILTER (WHERE f.created_at >= %(start)s AND f.created_at < %(end)s),
       count(f.id) FILTER (WHERE f.status = %(completed)s AND f.completed_at >= %(start)s
                             AND f.completed_at < %(end)s),
       count(f.id) FILTER (WHERE f.status = %(completed)s AND f.has_error AND f.completed_at >= %(start)s
                             AND f.completed_at < %(end)s),
       count(f.id) FILTER (WHERE f.status = %(failed)s AND f.completed_at >= %(start)s
                             AND f.completed_at < %(end)s)
  FROM pipeline.edc_pipeline p
  LEFT JOIN pipeline.edc_pipeline_file f ON f.edc_pipeline_id = p.id
   AND ((f.created_at >= %(start)s AND f.created_at < %(end)s)
        OR (f.completed_at >= %(start)s AND f.completed_at < %(end)s))
 WHERE (%(pipeline)s::text IS NULL OR p.code = %(pipeline)s::text)
 GROUP BY p.id ORDER BY p.code
"""
_FAILURES_SQL = """
SELECT coalesce(f.error_code, '-'), count(*), array_agg(f.id ORDER BY f.id)
  FROM pipeline.edc_pipeline_file f JOIN pipeline.edc_pipeline p ON p.id = f.edc_pipeline_id
 WHERE f.status = %(failed)s AND f.completed_at >= %(start)s AND f.completed_at < %(end)s
   AND (%(pipeline)s::text IS NULL OR p.code = %(pipeline)s::text)
 GROUP BY 1 ORDER BY 2 DESC, 1
"""
# Waiting for the EDC: recorded, never claimed past the lookup (no EDC record on the row), and
# not stuck (those are listed as stuck instead).
_WAITING_SQL = """
SELECT f.id, p.code, f.created_at, f.attempts
  FROM pipeline.edc_pipeline_file f JOIN pipeline.edc_pipeline p ON p.id = f.edc_pipeline_id
 WHERE f.status = %(started)s AND f.subject_event_crf_file_id IS NULL
   AND NOT ((f.lease_until IS NULL OR f.lease_until < %(now)s) AND f.updated_at < %(untouched_before)s)
   AND (%(pipeline)s::text IS NULL OR p.code = %(pipeline)s::text)
 ORDER BY f.created_at, f.id
"""


def collect_facts(
    db: Database,
    window: DigestWindow,
    *,
    pipeline_code: str | None,
    stuck_rule: StuckRule,
    dlq_depth: int | None,
) -> DigestFacts:
    """The digest of ``window``: files reached quarantine, counts, failures by code, jobs waiting
    for the EDC and stuck jobs (as of ``stuck_rule.now``)."""
    params = {
        "start": window.start,
        "end": window.end,
        "pipeline": pipeline_code,
        "completed": COMPLETED,
        "failed": FAILED,
        "started": STARTED,
        "now": stuck_rule.now,
        "untouched_before": stuck_rule.untouched_before,
    }
    with db.transaction() as cur:
        cur.execute(_FILES_SQL, params)
        files = tuple(_file(row) for row in cur.fetchall())
        cur.execute(_PIPELINES_SQL, params)
        pipelines = tuple(PipelineCounts(*row) for row in cur.fetchall())
        cur.execute(_FAILURES_SQL, params)
        failures = tuple(
            FailureCount(code, _meaning(code), int(count), tuple(ids)) for code, count, ids in cur.fetchall()
        )
        cur.execute(_WAITING_SQL, params)
        waiting = tuple(WaitingJob(*row) for row in cur.fetchall())
    stuck = JobQueries(db).list_jobs(
        JobFilter(pipeline_code=pipeline_code, stuck=stuck_rule, limit=STUCK_LIMIT)
    )
    return DigestFacts(
        window=window,
        pipeline_code=pipeline_code,
        generated_at=stuck_rule.now,
        files=files,
        pipelines=pipelines,
        failures=failures,
        waiting=waiting,
        stuck=tuple(sorted(stuck, key=lambda j: j.id)),
        dlq_depth=dlq_depth,
    )


def read_dlq_depth(queue: Queue | None) -> int | None:
    """Messages in the dead-letter queue (visible and in flight), or None when it cannot be read."""
    if queue is None:
        return None
    names = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")
    try:
        found = queue.read_attributes(names)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        log.warning("digest.dlq_depth_unavailable", error_type=type(exc).__name__)
        return None
    return sum(int(found.get(name, 0)) for name in names)


def _meaning(code: str) -> str:
    entry = ERROR_CODES.get(code)
    return entry.meaning if entry else "(not in the error dictionary)"


def _file(row: tuple[Any, ...]) -> QuarantinedFile:
    job_id, code, key, series, instances, uids, size, has_error, error_codes, first_code, done = row
    problems: tuple[str, ...] = ()
    if has_error:
        listed = sorted(str(c) for c in error_codes or ())
        problems = tuple(listed) or ((str(first_code),) if first_code else ("-",))
    return QuarantinedFile(
        job_id=int(job_id),
        pipeline_code=str(code),
        quarantine_key=str(key or ""),
        series=int(series),
        instances=int(instances),
        atri_uids=tuple(str(u) for u in uids),
        size=None if size is None else int(size),
        problem_codes=problems,
        completed_at=done,
    )
