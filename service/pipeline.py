"""Stages 2-7 for one S3 object: choose the pipeline, open the job, look up, process, place, record.

``ObjectHandler.handle`` never touches SQS: it returns an ``Outcome`` and the worker settles the
message from it. Permanent faults are recorded here and acknowledged; retryable ones are
recorded as Failed only on the last delivery the queue allows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import psycopg2
import structlog
from pydicom.tag import BaseTag

from service.breaker import Dependency
from service.edc import EdcLookup, EdcRecord
from service.errors import ErrorEntry, PermanentError, PipelineError, RetryableError, Stage
from service.events import ObjectCreated
from service.fingerprint import Fingerprint
from service.keys import (
    SOURCE_ROOT,
    QuarantineFields,
    SourceKey,
    ddfile_name_of,
    parse_source_key,
    render_name,
)
from service.largeuploads import Placed, stamp_in_s3, stream_zip
from service.logs import describe_exception
from service.metrics import UNASSIGNED, Metrics, NoMetrics
from service.placer import Destination, Placer
from service.processors import is_zip, process_upload
from service.processors.base import ProcessResult, SeriesKey, SeriesSummary, UidAllocator, ZipLimits
from service.quarantine import (
    JOB_ID_METADATA,
    IntegrityRecord,
    check_fits_s3,
    fingerprint_in,
    quarantine_metadata,
)
from service.reporting import JobReport, Reporter, member_issue_entries
from service.retry import is_transient_db_error
from service.s3io import (
    ObjectRef,
    ObjectStore,
    UploadReceipt,
    file_fingerprint,
)
from service.s3stream import ArrivingDownload
from service.tracking import (
    COMPLETED,
    COPY,
    EXHAUSTED_CODE,
    FAILED,
    Job,
    JobResult,
    LeaseLostError,
    Pipeline,
    TrackingStore,
)
from service.workspace import check_room, disk_space

log = structlog.get_logger()

SOURCE_PREFIX = f"{SOURCE_ROOT}/"
# How often a delivery that found its job claimed elsewhere looks again (a claim is one UPDATE).
_CLAIM_RECHECK_S = 5.0

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with the message for one object.

    Acknowledge it (``done``); show it again later, which costs a delivery (``retry``); keep it and
    run it again in place, which does not (``park``: a replica-lag wait, a job another delivery
    holds; ``paused``: a dependency is down, until the breaker closes); or leave it alone
    (``left``: another delivery of the message holds the job and settles the message).
    """

    ack: bool
    reason: str
    delay_s: int | None = None  # retry: None lets the worker's backoff policy pick the delay
    park_s: float | None = None
    outage: Dependency | None = None
    leave: bool = False

    @classmethod
    def done(cls, reason: str) -> Outcome:
        return cls(ack=True, reason=reason)

    @classmethod
    def retry(cls, reason: str, delay_s: int | None = None) -> Outcome:
        return cls(ack=False, reason=reason, delay_s=delay_s)

    @classmethod
    def park(cls, reason: str, seconds: float) -> Outcome:
        return cls(ack=False, reason=reason, park_s=seconds)

    @classmethod
    def paused(cls, dependency: Dependency) -> Outcome:
        return cls(ack=False, reason=f"{dependency} unreachable", outage=dependency)

    @classmethod
    def left(cls, reason: str) -> Outcome:
        return cls(ack=False, reason=reason, leave=True)


class Reachability(Protocol):
    """Tells an outage from a fault: does the dependency answer a probe right now?"""

    def reachable(self, dependency: Dependency) -> bool: ...


class _AlwaysReachable:
    def reachable(self, dependency: Dependency) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Delivery:
    """Which delivery of the SQS message this is."""

    message_id: str
    receive_count: int
    max_receive_count: int | None  # None: no redrive policy, deliveries never run out

    @property
    def owner(self) -> str:
        """Who holds a job's lease: this delivery, not the message (a redelivery is someone else)."""
        return f"{self.message_id}:{self.receive_count}"

    @property
    def is_last(self) -> bool:
        return self.max_receive_count is not None and self.receive_count >= self.max_receive_count


@dataclass(frozen=True, slots=True)
class HandlerOptions:
    """The settings the handler needs (a subset of ``Settings``)."""

    destination_bucket: str
    quarantine_prefix: str
    name_template: str
    replica_lag_interval_s: int
    replica_lag_max_s: int
    lease_s: int
    max_object_bytes: int
    notify_on_completion: bool
    tracking_tag: BaseTag
    zip_limits: ZipLimits
    work_dir: Path | None
    source_bucket: str | None = None  # None: events for any bucket are taken
    max_in_memory_bytes: int = 256 * 1024**2
    copy_min_bytes: int = 0  # single DICOM files this large are stamped inside S3 (0: never)


@dataclass(slots=True)
class _Attempt:
    """What one attempt has learned so far; used to report whatever stage it stopped at."""

    source: ObjectCreated
    pipeline: Pipeline
    job: Job
    delivery: Delivery
    key: SourceKey | None = None
    record: EdcRecord | None = None
    source_print: Fingerprint | None = None
    destination: str | None = None
    started: float = field(default_factory=time.monotonic)  # for ProcessingDurationMs

    @property
    def duration_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)


class ObjectHandler:
    """Runs one object through the pipeline. Thread-safe: holds no per-object state."""

    def __init__(
        self,
        tracking: TrackingStore,
        edc: EdcLookup,
        store: ObjectStore,
        reporter: Reporter,
        options: HandlerOptions,
        clock: Clock,
        health: Reachability | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._tracking = tracking
        self._edc = edc
        self._store = store
        self._placer = Placer(store, tracking, options.destination_bucket)
        self._reporter = reporter
        self._options = options
        self._clock = clock
        self._health = health or _AlwaysReachable()
        self._metrics: Metrics = metrics or NoMetrics()

    def handle(self, source: ObjectCreated, delivery: Delivery) -> Outcome:
        """Process one object; return how to settle its message. Raises only on database faults
        the probe cannot confirm as an outage (the worker retries those like any transient fault)."""
        try:
            return self._handle(source, delivery)
        except psycopg2.Error as exc:
            if is_transient_db_error(exc) and self._outage(Dependency.PIPELINE_DATABASE, exc):
                return Outcome.paused(Dependency.PIPELINE_DATABASE)
            raise

    def _outage(self, dependency: Dependency, exc: BaseException) -> bool:
        """True when ``dependency`` does not answer a probe either: an outage, not this job's fault."""
        if self._health.reachable(dependency):
            return False
        log.warning("job.paused_for_outage", dependency=str(dependency), **describe_exception(exc))
        return True

    def _handle(self, source: ObjectCreated, delivery: Delivery) -> Outcome:
        if not self._is_source(source):
            # Not an upload (a notification wired to the error-log or destination bucket, say):
            # recording it would write an error log, whose event would come back here.
            log.info("job.not_a_source_object", bucket=source.bucket)
            return Outcome.done("not a source object")
        now = self._clock()
        if source.job_id is not None:  # a reprocess message: its job is recorded already
            found = self._tracking.execution(source.job_id, source)
            if found is None:
                return self._reject_unknown_execution(source, delivery)
            pipeline, job = found
        else:
            ddfile = ddfile_name_of(source.key)
            if ddfile is None:
                return self._reject_unplaceable(source)
            handling = self._tracking.pipeline_for_ddfile(ddfile)
            if handling is None:
                log.info("pipeline.ddfile_not_handled", ddfile_name=ddfile)
                return Outcome.done("ddfile not handled")
            pipeline = handling
            job = self._tracking.open_job(pipeline, source, source.key.rsplit("/", 1)[-1], now)
        with structlog.contextvars.bound_contextvars(pipeline_code=pipeline.code, pipeline_file_id=job.id):
            if job.is_settled:
                log.info("job.duplicate_delivery", status=job.status)
                return Outcome.done("duplicate delivery")
            lease = timedelta(seconds=self._options.lease_s)
            if not self._tracking.claim_job(job.id, delivery.owner, now, lease):
                # Look again in place (no delivery spent): soon, as the holder may be about to
                # settle the job (this is a duplicate, then acknowledged), and at the latest
                # just after its lease would run out (it died: the job is claimable then).
                remaining = self._tracking.lease_remaining_s(job.id, now)
                wait_s = min(_CLAIM_RECHECK_S, max(1.0, (remaining or 0.0) + 1.0))
                log.info("job.claimed_elsewhere", error_code="ERRL8002", wait_s=round(wait_s, 1))
                return Outcome.park("claimed by another delivery", wait_s)
            attempt = _Attempt(source, pipeline, job, delivery)
            try:
                return self._attempt(attempt)
            except LeaseLostError:
                # Another delivery holds the job (this one outlived its lease). If it is a later
                # delivery of this message, deleting the message would take it from under the
                # holder: leave the message to it.
                log.warning("job.lease_lost")
                return Outcome.left("lease lost")

    def _is_source(self, source: ObjectCreated) -> bool:
        bucket = self._options.source_bucket
        return (bucket is None or source.bucket == bucket) and source.key.startswith(SOURCE_PREFIX)

    def _attempt(self, attempt: _Attempt) -> Outcome:
        try:
            return self._run(attempt)
        except LeaseLostError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is classified, never a crash of the loop
            return self._on_error(attempt, exc)

    def report_malformed(self, message_id: str, reason: str) -> None:
        """Record and report a message that is not an event (ERRS1001); it goes on to the DLQ."""
        now = self._clock()
        label = f"(SQS message {message_id})"
        entry = ErrorEntry("ERRS1001", reason, Stage.EVENT)
        self._tracking.record_error(None, label, entry.code, entry.message, entry.stage, now)
        source = ObjectCreated(bucket="-", key=label, version_id=None, etag=None, size=None, event_time=now)
        report = JobReport(source=source, pipeline_code=None, job_id=None, created_at=now, status=FAILED)
        self._reporter.report_errors(report, [entry], now)

    def _on_error(self, attempt: _Attempt, exc: Exception) -> Outcome:
        dependency = _dependency_of(exc)
        if dependency is not None and self._outage(dependency, exc):
            # Nothing is recorded (the database may be the one down): the job keeps its lease
            # while the message is parked, and runs again in place when the breaker closes.
            return Outcome.paused(dependency)
        if isinstance(exc, PermanentError):
            if self._complete_from_earlier_upload(attempt, _entry(exc)):
                return Outcome.done(f"completed earlier, {exc.code} now")
            self._fail(attempt, [_entry(exc)], exc.code)
            return Outcome.done(f"failed {exc.code}")
        if isinstance(exc, RetryableError):
            entry = _entry(exc)
        elif isinstance(exc, psycopg2.Error):  # the tracking database failed mid-job
            # Unreachable (connection, failover) or refused (a statement failed): S1004 / S1005.
            code = "ERRS1004" if is_transient_db_error(exc) else "ERRS1005"
            entry = ErrorEntry(code, f"pipeline database error ({type(exc).__name__})", Stage.TRACKING)
        elif isinstance(exc, OSError):  # local disk: full, unwritable temp dir
            log.warning("job.local_io_error", **describe_exception(exc))
            entry = ErrorEntry("ERRL2005", f"local I/O failed ({type(exc).__name__})", Stage.PROCESS)
        else:  # a bug: retried like a transient fault, recorded when deliveries run out
            log.error("job.unexpected_error", **describe_exception(exc))
            entry = ErrorEntry("ERRL8005", f"unexpected {type(exc).__name__}", Stage.WORKER)
        return self._retry_or_exhaust(attempt, entry)

    def _run(self, attempt: _Attempt) -> Outcome:
        attempt.key = parse_source_key(attempt.source.key)
        record = self._edc.lookup_crf_file(attempt.key)
        if record is None:
            return self._wait_for_replica(attempt)
        attempt.record = record
        owner = attempt.delivery.owner
        self._tracking.record_edc(attempt.job.id, owner, record, self._clock())
        # Everything that can refuse the file without reading it, before the download.
        name = self._options.quarantine_prefix + render_name(
            self._options.name_template, _name_fields(attempt.job, attempt.key, record)
        )
        check_fits_s3(name, quarantine_metadata(attempt.job.id, attempt.source, _LARGEST, _LARGEST))
        size = attempt.source.size
        if size is None:
            size = self._store.size_of(_ref(attempt.source))
        if size > self._options.max_object_bytes:
            raise PermanentError("ERRL2003", f"{size} bytes > MAX_OBJECT_BYTES", Stage.DOWNLOAD)
        if self._stamps_in_s3(attempt, size):
            outcome = self._run_in_s3(attempt, name)
            if outcome is not None:
                return outcome
        work_dir = self._options.work_dir or Path(tempfile.gettempdir())
        check_room(size, disk_space(work_dir))
        with tempfile.TemporaryDirectory(prefix="edc-job-", dir=work_dir) as tmp:
            started = self._clock()
            if self._store.transfers_in_parallel(size):
                with contextlib.closing(
                    self._store.start_download(_ref(attempt.source), Path(tmp) / "source")
                ) as arriving:
                    if attempt.pipeline.kind != COPY and is_zip(Path(tmp) / "source"):
                        return self._run_streamed(attempt, name, Path(tmp), arriving, started)
                    attempt.source_print = arriving.fingerprint()
            else:
                attempt.source_print = self._store.download(_ref(attempt.source), Path(tmp) / "source")
            result = self._process(attempt, Path(tmp), started)
            issues = member_issue_entries(Path(tmp) / "source", result)
            assert attempt.source_print is not None
            # A copy's output is the source itself, already hashed as it streamed in.
            copied = attempt.pipeline.kind == COPY
            output = attempt.source_print if copied else file_fingerprint(Path(tmp) / "output")
            sha256 = output.sha256

            def upload(bucket: str, key: str, metadata: Mapping[str, str]) -> UploadReceipt:
                return self._store.upload_once(Path(tmp) / "output", bucket, key, metadata, sha256)

            placed = self._placer.place(_destination(attempt, name), attempt.source_print, output, upload)
            attempt.destination = placed.key
        integrity = IntegrityRecord(attempt.source_print, placed.stored, placed.s3_checksum)
        return self._complete(attempt, result, issues, integrity)

    def _stamps_in_s3(self, attempt: _Attempt, size: int) -> bool:
        """A single DICOM file large enough that copying its unchanged bytes inside S3 pays."""
        minimum = self._options.copy_min_bytes
        return attempt.pipeline.kind != COPY and minimum > 0 and size >= minimum

    def _run_in_s3(self, attempt: _Attempt, name: str) -> Outcome | None:
        """A single file stamped inside S3 (``largeuploads``); None: take the local path."""
        started = self._clock()
        placed = stamp_in_s3(
            self._store,
            self._placer,
            _destination(attempt, name),
            _ref(attempt.source),
            self._options.tracking_tag,
            self._allocator(attempt.job.id),
            lambda result, source: self._log_processed(attempt, result, source, started, in_s3=True),
        )
        return None if placed is None else self._settle(attempt, placed, [])

    def _run_streamed(
        self, attempt: _Attempt, name: str, tmp: Path, arriving: ArrivingDownload, started: datetime
    ) -> Outcome:
        """A zip stamped while it arrives and sent while it is written (``largeuploads``)."""
        placed = stream_zip(
            self._placer,
            _destination(attempt, name),
            arriving,
            tmp,
            self._allocator(attempt.job.id),
            lambda result, source: self._log_processed(attempt, result, source, started, in_s3=False),
            tag=self._options.tracking_tag,
            limits=self._options.zip_limits,
            max_in_memory_bytes=self._options.max_in_memory_bytes,
        )
        return self._settle(attempt, placed, member_issue_entries(tmp / "source", placed.result))

    def _settle(self, attempt: _Attempt, placed: Placed, issues: list[ErrorEntry]) -> Outcome:
        attempt.source_print = placed.source
        attempt.destination = placed.placement.key
        integrity = IntegrityRecord(placed.source, placed.placement.stored, placed.placement.s3_checksum)
        return self._complete(attempt, placed.result, issues, integrity)

    def _allocator(self, job_id: int) -> UidAllocator:
        def allocate(series: Sequence[SeriesSummary]) -> Mapping[SeriesKey, str]:
            uids = self._tracking.allocate_series(job_id, series)
            if any(not uid.startswith(f"{job_id}.") for uid in uids.values()):
                raise RetryableError("ERRS1003", "tracking UIDs belong to another job", Stage.TRACKING)
            return uids

        return allocate

    def _log_processed(
        self, attempt: _Attempt, result: ProcessResult, source: Fingerprint, started: datetime, *, in_s3: bool
    ) -> None:
        log.info(
            "job.processed",
            bytes=source.size,
            series=len(result.series),
            members=result.members,
            instances_stamped=result.instances_stamped,
            issues=len(result.issues),
            fallbacks=result.fallbacks,
            in_s3=in_s3,
            stage=Stage.PROCESS,
            duration_ms=int((self._clock() - started).total_seconds() * 1000),
        )

    def _process(self, attempt: _Attempt, tmp: Path, started: datetime) -> ProcessResult:
        """Stamp the downloaded ``tmp/source`` into ``tmp/output`` (a copy pipeline links it)."""
        if attempt.pipeline.kind == COPY:
            # No DICOM processing: the output is the downloaded file, linked rather than copied.
            try:
                os.link(tmp / "source", tmp / "output")
            except OSError:  # a file system without hard links
                shutil.copyfile(tmp / "source", tmp / "output")
            result = ProcessResult(series=(), issues=(), instances_stamped=0, members=1)
        else:
            result = process_upload(
                tmp / "source",
                tmp / "output",
                self._allocator(attempt.job.id),
                tracking_tag=self._options.tracking_tag,
                limits=self._options.zip_limits,
                work_dir=tmp,
                max_in_memory_bytes=self._options.max_in_memory_bytes,
            )
        assert attempt.source_print is not None
        self._log_processed(attempt, result, attempt.source_print, started, in_s3=False)
        return result

    def _complete(
        self, attempt: _Attempt, result: ProcessResult, entries: list[ErrorEntry], integrity: IntegrityRecord
    ) -> Outcome:
        now = self._clock()
        settled = JobResult(
            result.series, integrity, result.members, result.instances_stamped, result.system_files
        )
        try:
            self._tracking.complete_job(attempt.job.id, attempt.delivery.owner, entries, now, settled)
        except psycopg2.Error as exc:
            raise RetryableError(
                "ERRL4003",
                f"recording the result failed ({type(exc).__name__})",
                Stage.TRACKING,
                dependency=Dependency.PIPELINE_DATABASE if is_transient_db_error(exc) else None,
            ) from exc
        first_code = entries[0].code if entries else None
        log.info(
            "job.completed",
            has_error=bool(entries),
            error_code=first_code,
            series=len(result.series),
            instances_stamped=result.instances_stamped,
        )
        self._count_completed(attempt, now)
        report = self._report(attempt, COMPLETED)
        if entries:
            self._reporter.report_errors(report, entries, now)
        elif self._options.notify_on_completion:
            self._reporter.report_completion(report)
        return Outcome.done("completed")

    def _complete_from_earlier_upload(self, attempt: _Attempt, entry: ErrorEntry) -> bool:
        """An earlier attempt put the file in quarantine and died before recording it; this one
        was refused (the source version deleted since, the EDC row changed...). The file is in
        quarantine all the same, so the job is Completed + has_error, never Failed beside an
        object the labs can see. Returns False when there is no such object."""
        reserved = self._tracking.reserved_destination(attempt.job.id)
        if reserved is None:
            return False
        bucket, key = reserved
        existing = self._store.head(bucket, key)
        if existing is None or existing.get(JOB_ID_METADATA) != str(attempt.job.id):
            return False
        attempt.destination = key
        source = fingerprint_in(existing, "source-") or attempt.source_print
        if source is None:  # an object from before the integrity record: nothing true to record
            return False
        stored = fingerprint_in(existing, "")
        integrity = IntegrityRecord(source, stored, None)
        now = self._clock()
        result = JobResult(None, integrity, None, None, None)
        self._tracking.complete_job(attempt.job.id, attempt.delivery.owner, [entry], now, result)
        log.warning("job.completed_from_earlier_upload", error_code=entry.code, stage=entry.stage)
        self._count_completed(attempt, now)
        self._reporter.report_errors(self._report(attempt, COMPLETED), [entry], now)
        return True

    def _count_completed(self, attempt: _Attempt, now: datetime) -> None:
        """The metrics of a job that reached quarantine: the latency runs from the S3 event
        (for a reprocess, from its request) to now, just after the object was written."""
        latency_ms = int((now - attempt.source.event_time).total_seconds() * 1000)
        self._metrics.job_completed(
            attempt.pipeline.code,
            duration_ms=attempt.duration_ms,
            latency_ms=max(0, latency_ms),
            bytes_processed=attempt.source_print.size if attempt.source_print else None,
        )

    def _wait_for_replica(self, attempt: _Attempt) -> Outcome:
        now = self._clock()
        waited = (now - attempt.source.event_time).total_seconds()
        if waited >= self._options.replica_lag_max_s or attempt.delivery.is_last:
            raise PermanentError("ERRL1003", f"not found after {int(waited)} s", Stage.EDC_LOOKUP)
        self._tracking.release_job(attempt.job.id, attempt.delivery.owner, now, waiting_for_edc=True)
        log.info("edc.not_found_yet", waited_s=int(waited), stage=Stage.EDC_LOOKUP)
        # Parked in the worker, not shown again: a replica-lag wait costs no delivery.
        return Outcome.park("waiting for the EDC replica", self._options.replica_lag_interval_s)

    def _retry_or_exhaust(self, attempt: _Attempt, entry: ErrorEntry) -> Outcome:
        delivery = attempt.delivery
        if not delivery.is_last:
            log.warning(
                "job.retry_later",
                error_code=entry.code,
                stage=entry.stage,
                receive_count=delivery.receive_count,
            )
            self._tracking.release_job(attempt.job.id, delivery.owner, self._clock(), waiting_for_edc=False)
            return Outcome.retry(f"transient {entry.code}")
        exhausted = ErrorEntry(EXHAUSTED_CODE, f"last delivery failed with {entry.code}", entry.stage)
        self._fail(attempt, [entry, exhausted], EXHAUSTED_CODE)
        # Not acknowledged: the queue moves the message to the DLQ, where operators redrive it.
        return Outcome.retry("deliveries exhausted")

    def _fail(self, attempt: _Attempt, entries: list[ErrorEntry], job_code: str) -> None:
        now = self._clock()
        self._tracking.fail_job(
            attempt.job.id, attempt.delivery.owner, job_code, entries, now, attempt.source_print
        )
        log.warning("job.failed", error_code=entries[0].code, stage=entries[0].stage)
        self._metrics.job_failed(attempt.pipeline.code, job_code, duration_ms=attempt.duration_ms)
        self._reporter.report_errors(self._report(attempt, FAILED), entries, now)

    def _reject_unplaceable(self, source: ObjectCreated) -> Outcome:
        """A key that fits no layout: no pipeline, no job; an error row, log and notification."""
        now = self._clock()
        entry = ErrorEntry("ERRL1001", "key does not fit the source layout", Stage.KEY)
        self._tracking.record_error(None, source.key, entry.code, entry.message, entry.stage, now)
        log.warning("job.rejected_key", error_code=entry.code, stage=entry.stage)
        self._metrics.job_failed(UNASSIGNED, entry.code, duration_ms=None)
        report = JobReport(source=source, pipeline_code=None, job_id=None, created_at=now, status=FAILED)
        self._reporter.report_errors(report, [entry], now)
        return Outcome.done("key layout")

    def _reject_unknown_execution(self, source: ObjectCreated, delivery: Delivery) -> Outcome:
        """A reprocess message naming a job that is another object version's (ERRS1003, the design's
        "does not match the input's") or no job at all (ERRS1001), recorded and acknowledged:
        running it again would not make it match."""
        now = self._clock()
        assert source.job_id is not None
        if self._tracking.stored_job(source.job_id) is not None:
            reason = f"reprocess message names job {source.job_id}, which is another object version's"
            entry = ErrorEntry("ERRS1003", reason, Stage.EVENT)
        else:
            reason = f"reprocess message names job {source.job_id}, which does not exist"
            entry = ErrorEntry("ERRS1001", reason, Stage.EVENT)
        label = f"(SQS message {delivery.message_id}) {source.key}"
        self._tracking.record_error(None, label, entry.code, entry.message, entry.stage, now)
        log.warning("job.unknown_execution", error_code=entry.code, requested_job_id=source.job_id)
        report = JobReport(source=source, pipeline_code=None, job_id=None, created_at=now, status=FAILED)
        self._reporter.report_errors(report, [entry], now)
        return Outcome.done("unknown execution")

    def _report(self, attempt: _Attempt, status: str) -> JobReport:
        return JobReport(
            source=attempt.source,
            pipeline_code=attempt.pipeline.code,
            job_id=attempt.job.id,
            created_at=attempt.job.created_at,
            status=status,
            key=attempt.key,
            record=attempt.record,
            destination=attempt.destination,
        )


def _dependency_of(exc: Exception) -> Dependency | None:
    """The dependency a fault is about, if it is one that might be an outage."""
    if isinstance(exc, RetryableError) and exc.dependency is not None:
        return Dependency(exc.dependency)
    if isinstance(exc, psycopg2.Error) and is_transient_db_error(exc):
        return Dependency.PIPELINE_DATABASE
    return None


def _destination(attempt: _Attempt, name: str) -> Destination:
    return Destination(attempt.job.id, attempt.delivery.owner, attempt.source, name)


def _ref(source: ObjectCreated) -> ObjectRef:
    return ObjectRef(source.bucket, source.key, source.version_id, source.etag)


# The largest integrity values, to check the metadata's size before anything is read.
_LARGEST = Fingerprint(10**19, "f" * 64)


def _entry(exc: PipelineError) -> ErrorEntry:
    return ErrorEntry(exc.code, exc.message, str(exc.stage or Stage.WORKER))


def _name_fields(job: Job, key: SourceKey, record: EdcRecord) -> QuarantineFields:
    return QuarantineFields(
        ddcrf=record.ddcrf_name,
        ddfile=record.ddfile_name,
        participant=record.participant_code,
        event=record.event_code,
        subjecteventcrf_id=record.subjecteventcrf_id,
        revision=record.revision_number,
        pipeline_file_id=job.id,
        created_at=job.created_at,
        ext=key.ext,
    )
