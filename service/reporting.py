"""Stage 7: make failures visible: an S3 error log object and an admin notification.

Both are built from codes, ids, counts and the source key only. Reporting is best effort once
its own retries are spent: the error rows are already in the database, and a notification
outage must not turn a recorded failure into a redelivery loop.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from service.edc import EdcRecord
from service.errors import ErrorEntry, RetryableError, Stage, meaning_of
from service.events import ObjectCreated
from service.keys import QuarantineFields, SourceKey, clean_field, error_log_name
from service.notify import Notifier
from service.processors import is_zip
from service.processors.base import ProcessResult
from service.processors.directory import member_suffix
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
        self._publish(notification_subject(job, errors), fit_notification(text, location), job)
        return location

    def report_completion(self, job: JobReport) -> None:
        """Tell the admins a file reached quarantine (NOTIFY_ON_COMPLETION)."""
        subject = f"EDC image pipeline: job {job.job_id} completed"
        body = (
            f"pipeline: {job.pipeline_code}\npipeline_file_id: {job.job_id}\n"
            f"source: s3://{job.source.bucket}/{job.source.key}\nstatus: {job.status}\n"
            f"quarantine: {job.destination}\n"
        )
        self._notifier.publish_later(subject, body, job.job_id)  # sent in batches (service/notify.py)

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
    header and as many error lines as fit, say how many were left out and where the whole log is,
    and always keep the next steps (what the admin can do is the point of the message).
    """
    footer = f"\nerror log: {location}\n" if location else ""
    if len((text + footer).encode("utf-8")) <= limit:
        return text + footer
    lines = text.splitlines()
    split = lines.index(_NEXT_STEPS) if _NEXT_STEPS in lines else len(lines)
    body, steps = lines[:split], lines[split:]
    kept: list[str] = []
    size = sum(len(line.encode("utf-8")) + 1 for line in steps)
    budget = limit - 400  # room for the note and the footer
    for line in body:
        size += len(line.encode("utf-8")) + 1
        if size > budget:
            break
        kept.append(line)
    left_out = len(body) - len(kept)
    where = (
        f"the full list is in the error log {location}" if location else "the full list is in the database"
    )
    note = f"  ... {left_out} more line(s) not shown: {where}"
    return "\n".join([*kept, note, *steps]) + "\n" + footer


_NEXT_STEPS = "next steps:"
SUBJECT_LIMIT = 99  # SNS: "must be less than 100 characters"; mail clients show about this much
_EXHAUSTED = "ERRL8003"


def notification_subject(job: JobReport, errors: Sequence[ErrorEntry]) -> str:
    """One line, under 100 characters: the job, what became of it, the first code and its meaning.

    ``EDC image pipeline: job 42 Failed, ERRS1012 File is not DICOM``; with several codes,
    ``(+2 more)`` after the first.
    """
    first = errors[0].code if errors else "-"
    status = _status_phrase(job, errors)
    more = len({e.code for e in errors}) - 1
    head = f"EDC image pipeline: job {job.job_id if job.job_id is not None else '-'} {status}, {first}"
    tail = f" (+{more} more)" if more > 0 else ""
    meaning = meaning_of(first) if errors else ""
    room = SUBJECT_LIMIT - len(head) - len(tail) - 1
    if room < 8:
        return _one_line(head + tail)[:SUBJECT_LIMIT]
    if len(meaning) > room:
        meaning = meaning[: room - 3].rstrip(" ,:;") + "..."
    return _one_line(f"{head} {meaning}{tail}")


def _one_line(text: str) -> str:
    return " ".join(text.split())  # mail clients and SNS show a subject on one line


def _status_phrase(job: JobReport, errors: Sequence[ErrorEntry]) -> str:
    if job.job_id is None:
        return "not started"
    if job.status == "Completed":
        return "in quarantine with a problem"
    if any(e.code == _EXHAUSTED for e in errors):
        return "Failed (deliveries exhausted)"
    return job.status


# What an admin can do about a code beyond the generic next steps (ids and commands only).
_ADVICE = {
    "ERRL1001": "The object's key does not fit the source layout: check what wrote it (no job was made).",
    "ERRL1002": "The EDC read replica did not answer: check it; the job is retried by itself.",
    "ERRL1003": "Once the EDC record exists in the replica, reprocess the job.",
    "ERRL1004": "The EDC lookup query failed: check EDC_LOOKUP_SQL against the replica's schema.",
    "ERRL1005": "Several EDC rows match the file: correct the EDC data, then reprocess the job.",
    "ERRL2002": "The source version was deleted or overwritten: ask the site to upload the file again.",
    "ERRL2003": "Larger than MAX_OBJECT_BYTES: raise the limit (and the task's storage) or refuse the file.",
    "ERRL2004": "Cannot fit WORK_DIR: give the task more ephemeral storage, then reprocess the job.",
    "ERRL4001": "An EDC field the quarantine name needs is empty: complete the EDC record, then reprocess.",
    "ERRL4002": "The copy to the destination bucket failed: check DESTINATION_BUCKET and the task role.",
    "ERRL4004": "The quarantine key holds another job's object: nothing was overwritten; investigate.",
    "ERRL4005": "EDC names make the quarantine key too long: shorten them or the key template.",
    _EXHAUSTED: "The message is in the dead-letter queue: fix the cause, then `python -m service redrive`.",
    "ERRS1001": "The message is not an S3 event: inspect it in the dead-letter queue "
    "(`python -m service redrive --dry-run`).",
    "ERRS1002": "The file is corrupt or truncated: ask the site to upload it again.",
    "ERRS1012": "The file is not DICOM: ask the site to upload the right file.",
    "ERRS1013": "A non-DICOM member was carried over unchanged; the labs may ignore it.",
    "ERRS1015": "The zip archive is unreadable: ask the site to upload it again.",
    "ERRS1016": "The zip archive exceeds a safety limit (ZIP_MAX_*): check the upload before raising them.",
    "ERRS1020": "Too large for the in-memory rewrite: raise MAX_IN_MEMORY_BYTES (and the task's memory).",
}


def next_steps(job: JobReport, errors: Sequence[ErrorEntry]) -> list[str]:
    """What the admin can do next: the commands to look at and to rerun the job, and advice for
    the codes that have some."""
    steps = []
    if job.job_id is not None:
        steps.append(f"see the job: python -m service jobs show {job.job_id}")
        if job.status == "Completed":
            steps.append(f"the file is in quarantine: {job.destination or '-'}")
        if job.status == "Failed" or any(e.code == _EXHAUSTED for e in errors):
            steps.append(f"after fixing the cause: python -m service reprocess --file-id {job.job_id}")
    for code in dict.fromkeys(e.code for e in errors):
        if code in _ADVICE:
            steps.append(f"{code}: {_ADVICE[code]}")
    return steps


def render_error_log(job: JobReport, errors: Sequence[ErrorEntry], now: datetime) -> str:
    """The error log text: one header block, one line per error, then what to do next."""
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
    steps = next_steps(job, errors)
    if steps:
        lines.append(_NEXT_STEPS)
        lines.extend(f"  {step}" for step in steps)
    return "\n".join(lines) + "\n"


def member_issue_entries(source: Path, result: ProcessResult) -> list[ErrorEntry]:
    """Error entries for the members that had a problem, named by position, never by name.

    Exporters often name folders and files after the patient ("DOE^JOHN/IM1",
    "ROE^JANE.19650312"), so a zip member is reported as ``#N.ext``: its 1-based position in the
    archive (``MemberIssue.position``, exact even when two members share a name) and its extension
    when it is a known one. An issue without a position (a single file) is looked up by name.
    """
    if not result.issues:
        return []
    positions: dict[str, int] = {}
    if any(issue.position is None for issue in result.issues) and is_zip(source):
        with zipfile.ZipFile(source) as archive:
            positions = {name: n for n, name in reversed(list(enumerate(archive.namelist(), start=1)))}
    entries = []
    for issue in result.issues:
        label = issue.member
        position = issue.position if issue.position is not None else positions.get(issue.member)
        if position is not None:
            label = f"#{position}{member_suffix(issue.member)}"
        entries.append(ErrorEntry(issue.code, issue.message, Stage.PROCESS, label))
    return entries
