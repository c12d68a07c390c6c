"""Stage 7: make failures visible: an S3 error log object and an admin notification.

Both are built from codes, ids, counts and the source key only. Reporting is best effort once
its own retries are spent: the error rows are already in the database, and a notification
outage must not turn a recorded failure into a redelivery loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from service.edc import EdcRecord
from service.errors import ErrorEntry, RetryableError, meaning_of
from service.events import ObjectCreated
from service.keys import QuarantineFields, SourceKey, clean_field, error_log_name
from service.notify import Notifier
from service.quarantine import MAX_KEY_BYTES
from service.s3io import ObjectStore

log = structlog.get_logger()

# SNS refuses messages over 256 KB (subject and attributes included): stay well below.
NOTIFICATION_LIMIT_BYTES = 250_000
UNASSIGNED = "unassigned"  # error-log folder for keys that no pipeline could be chosen for
_MISSING = "NA"


@dataclass(frozen=True, slots=True)
class JobReport:
    """What is known about the job when it is reported."""

    source: ObjectCreated
    pipeline_code: str | None
    job_id: int | None
    created_at: datetime
    status: str
    key: SourceKey | None = None
    record: EdcRecord | None = None
    destination: str | None = None


@dataclass(frozen=True, slots=True)
class ReportTargets:
    """Where reports go."""

    error_log_bucket: str | None
    error_log_prefix: str
    name_template: str


class Reporter:
    """Writes error logs and publishes admin notifications."""

    def __init__(self, store: ObjectStore, notifier: Notifier, targets: ReportTargets) -> None:
        self._store = store
        self._notifier = notifier
        self._targets = targets

    def report_errors(self, job: JobReport, errors: Sequence[ErrorEntry], now: datetime) -> str | None:
        """Write the error log and notify the admins; return the error log's s3:// address."""
        location = None
        text = render_error_log(job, errors, now)
        if self._targets.error_log_bucket:
            key = self.error_log_key(job)
            try:
                self._store.put_text(self._targets.error_log_bucket, key, text)
                location = f"s3://{self._targets.error_log_bucket}/{key}"
            except RetryableError as exc:
                log.error("report.error_log_failed", error_code=exc.code, pipeline_file_id=job.job_id)
        codes = sorted({e.code for e in errors})
        subject = f"EDC image pipeline: {' '.join(codes)} on job {job.job_id or '-'}"
        self._publish(subject, fit_notification(text, location), job)
        return location

    def report_completion(self, job: JobReport) -> None:
        """Tell the admins a file reached quarantine (NOTIFY_ON_COMPLETION)."""
        subject = f"EDC image pipeline: job {job.job_id} completed"
        body = (
            f"pipeline: {job.pipeline_code}\npipeline_file_id: {job.job_id}\n"
            f"source: s3://{job.source.bucket}/{job.source.key}\nstatus: {job.status}\n"
            f"quarantine: {job.destination}\n"
        )
        self._publish(subject, body, job)

    def error_log_key(self, job: JobReport) -> str:
        """``{ERROR_LOG_PREFIX}{pipeline_code}/{quarantine-style name}_error_log.txt``."""
        folder = job.pipeline_code or UNASSIGNED
        if job.job_id is None:
            stem = clean_field(job.source.key.replace("/", "_"))[-150:]
            stamp = job.created_at.astimezone(UTC).strftime("%Y%m%d_%H%M%S")
            return f"{self._targets.error_log_prefix}{folder}/{stem}_{stamp}_error_log.txt"
        record, key = job.record, job.key
        fields = QuarantineFields(
            ddcrf=record.ddcrf_name if record else _MISSING,
            ddfile=record.ddfile_name if record else (key.ddfile_name if key else _MISSING),
            participant=record.participant_code if record else _MISSING,
            event=record.event_code if record else _MISSING,
            subjecteventcrf_id=record.subjecteventcrf_id
            if record
            else (key.subjecteventcrf_id if key else _MISSING),
            revision=record.revision_number if record else _MISSING,
            pipeline_file_id=job.job_id,
            created_at=job.created_at,
            ext=key.ext if key else "",
        )
        full = (
            f"{self._targets.error_log_prefix}{folder}/{error_log_name(self._targets.name_template, fields)}"
        )
        if len(full.encode("utf-8")) <= MAX_KEY_BYTES:
            return full
        # EDC names too long for an S3 key (ERRL4005 for the quarantine name): the ids suffice.
        stamp = job.created_at.astimezone(UTC).strftime("%Y%m%d_%H%M%S")
        return f"{self._targets.error_log_prefix}{folder}/job_{job.job_id}_{stamp}_error_log.txt"

    def _publish(self, subject: str, body: str, job: JobReport) -> None:
        try:
            self._notifier.publish(subject, body)
        except RetryableError as exc:
            log.error("report.notification_failed", error_code=exc.code, pipeline_file_id=job.job_id)


def fit_notification(text: str, location: str | None, limit: int = NOTIFICATION_LIMIT_BYTES) -> str:
    """The error log text as a notification body within SNS's size limit.

    A zip with thousands of member issues makes a log larger than SNS accepts (256 KB): keep the
    header and as many error lines as fit, then say how many were left out and where the whole
    log is.
    """
    footer = f"\nerror log: {location}\n" if location else ""
    if len((text + footer).encode("utf-8")) <= limit:
        return text + footer
    lines = text.splitlines()
    kept: list[str] = []
    size = 0
    budget = limit - 400  # room for the note and the footer
    for line in lines:
        size += len(line.encode("utf-8")) + 1
        if size > budget:
            break
        kept.append(line)
    left_out = len(lines) - len(kept)
    where = (
        f"the full list is in the error log {location}" if location else "the full list is in the database"
    )
    note = f"  ... {left_out} more line(s) not shown: {where}"
    return "\n".join([*kept, note]) + "\n" + footer


def render_error_log(job: JobReport, errors: Sequence[ErrorEntry], now: datetime) -> str:
    """The error log text: one header block, then one line per error."""
    version = job.source.version_id or job.source.etag or "-"
    lines = [
        "EDC image pipeline error log",
        f"pipeline: {job.pipeline_code or UNASSIGNED}",
        f"pipeline_file_id: {job.job_id if job.job_id is not None else '-'}",
        f"source: s3://{job.source.bucket}/{job.source.key}",
        f"source_version: {version}",
        f"status: {job.status}",
        f"reported_at: {now.astimezone(UTC).isoformat()}",
        "errors:",
    ]
    for error in errors:
        where = f" member={error.member}" if error.member else ""
        lines.append(f"  {error.code} [{error.stage}]{where} {meaning_of(error.code)}: {error.message}")
    return "\n".join(lines) + "\n"
