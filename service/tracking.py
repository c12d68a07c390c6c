"""Stage 3 and 6: the tracking store (pipeline schema): pipelines, jobs, series rows, errors.

Every method is one short transaction. Times come from the caller's clock, so a frozen clock
gives reproducible rows (the golden test relies on it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from service.db import Database
from service.edc import EdcRecord
from service.errors import ErrorEntry
from service.events import ObjectCreated
from service.fingerprint import Fingerprint
from service.processors.base import SeriesKey, SeriesSummary
from service.quarantine import IntegrityRecord

STARTED, IN_PROGRESS, COMPLETED, FAILED = "Started", "In Progress", "Completed", "Failed"
# Pipeline kinds: stamp the ATRIUID into DICOM, or place the file in quarantine unchanged.
DICOM, COPY = "dicom", "copy"
KINDS = (DICOM, COPY)
# A job failed only because deliveries ran out; a redrive from the DLQ may run it again.
EXHAUSTED_CODE = "ERRL8003"


class LeaseLostError(Exception):
    """Another delivery holds the job now; this one must not change it."""


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A registered pipeline and the ddfile names it handles."""

    id: int
    code: str
    label: str
    ddfiles: tuple[str, ...]
    enabled: bool = True
    kind: str = DICOM  # DICOM or COPY


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a completed job wrote: its series as stamped, the integrity record and the counts.

    ``series`` None keeps the series rows as allocated, and None counts stay unknown: a job
    completed from the object an earlier attempt left in quarantine knows no more than that.
    """

    series: Sequence[SeriesSummary] | None
    integrity: IntegrityRecord
    members: int | None
    instances_stamped: int | None
    system_files: int | None


@dataclass(frozen=True, slots=True)
class Job:
    """One ``edc_pipeline_file`` row: one object version."""

    id: int
    pipeline_id: int
    status: str
    has_error: bool
    error_code: str | None
    created_at: datetime
    attempts: int

    @property
    def is_settled(self) -> bool:
        """Completed, or failed for good: a new delivery of the same version has nothing to do."""
        return self.status == COMPLETED or (self.status == FAILED and self.error_code != EXHAUSTED_CODE)


_JOB_COLUMNS = "id, edc_pipeline_id, status, has_error, error_code, created_at, attempts"

# An ETag as S3 writes it: an MD5 in hex, with "-N" after a multipart upload's.
_ETAG = re.compile(r"^[0-9a-fA-F]{32}(-[0-9]+)?$")


@dataclass(frozen=True, slots=True)
class StoredJob:
    """A job row as the ``reprocess`` command sees it: its state and the exact source version."""

    id: int
    pipeline_id: int
    pipeline_code: str
    status: str
    error_code: str | None
    attempts: int
    lease_until: datetime | None
    created_at: datetime
    reprocess_of: int | None
    bucket: str
    key: str
    version: str  # source_version: the version id, else the ETag (what one-job-per-version keys on)
    version_id: str | None
    etag: str | None
    size: int | None

    @property
    def exact_version(self) -> tuple[str | None, str | None]:
        """(version id, ETag) of the source version. Rows written before migration 0004 hold only
        ``source_version``: an ETag when it looks like one, else a version id."""
        if self.version_id or self.etag:
            return self.version_id, self.etag
        if not self.version:
            return None, None
        return (None, self.version) if _ETAG.match(self.version) else (self.version, None)


_STORED_JOBS = (
    "SELECT f.id, f.edc_pipeline_id, p.code, f.status, f.error_code, f.attempts, f.lease_until,"
    " f.created_at, f.reprocess_of, f.source_bucket, f.source_key, f.source_version,"
    " f.source_version_id, f.source_etag, f.source_size"
    " FROM pipeline.edc_pipeline_file f JOIN pipeline.edc_pipeline p ON p.id = f.edc_pipeline_id"
)


class TrackingStore:
    """Reads and writes the ``pipeline`` schema. Database errors propagate to the caller."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- pipelines -------------------------------------------------------------------------
    def add_pipeline(
        self, code: str, label: str, ddfiles: Sequence[str], kind: str | None = None
    ) -> Pipeline:
        """Register (or update) a pipeline and the ddfile names it handles.

        ``kind`` None: a new pipeline is DICOM, an existing one keeps its kind. Raises
        ``ValueError`` if a ddfile already belongs to another pipeline.
        """
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO pipeline.edc_pipeline (code, label, kind) VALUES (%s, %s, COALESCE(%s, %s))"
                " ON CONFLICT (code) DO UPDATE SET label = EXCLUDED.label,"
                " kind = COALESCE(%s, pipeline.edc_pipeline.kind) RETURNING id",
                (code, label, kind, DICOM, kind),
            )
            (pipeline_id,) = _one(cur.fetchone())
            for name in ddfiles:
                cur.execute(
                    "INSERT INTO pipeline.edc_pipeline_ddfile (ddfile_name, edc_pipeline_id)"
                    " VALUES (%s, %s) ON CONFLICT (ddfile_name) DO NOTHING RETURNING edc_pipeline_id",
                    (name, pipeline_id),
                )
                if cur.fetchone() is None:
                    cur.execute(
                        "SELECT p.code FROM pipeline.edc_pipeline_ddfile d"
                        " JOIN pipeline.edc_pipeline p ON p.id = d.edc_pipeline_id"
                        " WHERE d.ddfile_name = %s",
                        (name,),
                    )
                    (owner,) = _one(cur.fetchone())
                    if owner != code:
                        raise ValueError(f"ddfile {name!r} is already handled by pipeline {owner}")
        found = self.pipeline_by_code(code)
        assert found is not None
        return found

    def list_pipelines(self) -> list[Pipeline]:
        """Every pipeline with its ddfile names, by code."""
        with self._db.transaction() as cur:
            cur.execute(
                "SELECT p.id, p.code, p.label, p.enabled, p.kind,"
                " coalesce(array_agg(d.ddfile_name ORDER BY d.ddfile_name)"
                "   FILTER (WHERE d.ddfile_name IS NOT NULL), '{}')"
                " FROM pipeline.edc_pipeline p"
                " LEFT JOIN pipeline.edc_pipeline_ddfile d ON d.edc_pipeline_id = p.id"
                " GROUP BY p.id ORDER BY p.code"
            )
            rows = cur.fetchall()
        return [Pipeline(r[0], r[1], r[2], tuple(r[5]), r[3], r[4]) for r in rows]

    def pipeline_by_code(self, code: str) -> Pipeline | None:
        """The pipeline called ``code``, or None."""
        return next((p for p in self.list_pipelines() if p.code == code), None)

    def pipeline_for_ddfile(self, ddfile_name: str) -> Pipeline | None:
        """The enabled pipeline that handles ``ddfile_name``, or None (the file is ignored)."""
        with self._db.transaction() as cur:
            cur.execute(
                "SELECT p.id, p.code, p.label, p.kind FROM pipeline.edc_pipeline_ddfile d"
                " JOIN pipeline.edc_pipeline p ON p.id = d.edc_pipeline_id"
                " WHERE d.ddfile_name = %s AND p.enabled",
                (ddfile_name,),
            )
            row = cur.fetchone()
        return Pipeline(row[0], row[1], row[2], (ddfile_name,), kind=row[3]) if row else None

    # -- jobs ------------------------------------------------------------------------------
    def open_job(self, pipeline: Pipeline, obj: ObjectCreated, file_name: str, now: datetime) -> Job:
        """The job of this object version: created on first delivery, found on every later one."""
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO pipeline.edc_pipeline_file (edc_pipeline_id, source_bucket, source_key,"
                " source_version, source_version_id, source_etag, source_size, event_time, file_name,"
                " created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (source_bucket, source_key, source_version) WHERE reprocess_of IS NULL"
                " DO NOTHING",
                (
                    pipeline.id,
                    obj.bucket,
                    obj.key,
                    obj.version_or_etag,
                    obj.version_id,
                    obj.etag,
                    obj.size,
                    obj.event_time,
                    file_name,
                    now,
                    now,
                ),
            )
            cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM pipeline.edc_pipeline_file"
                " WHERE source_bucket = %s AND source_key = %s AND source_version = %s"
                " AND reprocess_of IS NULL",
                (obj.bucket, obj.key, obj.version_or_etag),
            )
            return _job(_one(cur.fetchone()))

    def claim_job(self, job_id: int, owner: str, now: datetime, lease: timedelta) -> bool:
        """Mark the job In Progress for ``owner`` (one delivery: message id and receive count).

        ``attempts`` counts the deliveries that claimed it. Claimable when Started, when In
        Progress with no live lease (the delivery that held it died or let go), when it failed
        only because deliveries ran out (a DLQ redrive), or by the delivery that holds it (a
        message the worker parked runs again in place). A live
        lease is never taken over by anyone else, not even by a redelivery of the same message:
        the earlier delivery may still be running.
        """
        with self._db.transaction() as cur:
            cur.execute(
                "UPDATE pipeline.edc_pipeline_file SET status = %(in_progress)s, lease_owner = %(owner)s,"
                " lease_until = %(until)s, updated_at = %(now)s,"
                # A delivery that runs again in place (parked, paused) is still one attempt.
                " attempts = attempts + CASE WHEN status = %(in_progress)s AND lease_owner = %(owner)s"
                "   THEN 0 ELSE 1 END"
                " WHERE id = %(id)s AND (status = %(started)s"
                "   OR (status = %(in_progress)s AND (lease_until IS NULL OR lease_until < %(now)s"
                "       OR lease_owner = %(owner)s))"
                "   OR (status = %(failed)s AND error_code = %(exhausted)s))",
                {
                    "in_progress": IN_PROGRESS,
                    "owner": owner,
                    "until": now + lease,
                    "now": now,
                    "id": job_id,
                    "started": STARTED,
                    "failed": FAILED,
                    "exhausted": EXHAUSTED_CODE,
                },
            )
            return bool(cur.rowcount == 1)

    def expire_leases(self, owners: Sequence[str], now: datetime) -> int:
        """End the leases ``owners`` hold (a worker shutting down let go of their messages)."""
        if not owners:
            return 0
        with self._db.transaction() as cur:
            cur.execute(
                "UPDATE pipeline.edc_pipeline_file SET lease_until = %s"
                " WHERE lease_owner = ANY(%s) AND status = %s AND lease_until > %s",
                (now, list(owners), IN_PROGRESS, now),
            )
            return int(cur.rowcount)

    def lease_remaining_s(self, job_id: int, now: datetime) -> float | None:
        """Seconds until the job's lease runs out (None without a lease)."""
        with self._db.transaction() as cur:
            cur.execute("SELECT lease_until FROM pipeline.edc_pipeline_file WHERE id = %s", (job_id,))
            row = cur.fetchone()
        if row is None or row[0] is None:
            return None
        return max(0.0, float((row[0] - now).total_seconds()))

    def clear_destination(self, job_id: int, owner: str) -> None:
        """Forget the reserved quarantine place (its bucket does not exist: nothing is there)."""
        with self._db.transaction() as cur:
            cur.execute(
                "UPDATE pipeline.edc_pipeline_file SET destination_bucket = NULL, destination_key = NULL"
                " WHERE id = %s AND lease_owner = %s AND status = %s",
                (job_id, owner, IN_PROGRESS),
            )

    def renew_leases(self, owners: Sequence[str], now: datetime, lease: timedelta) -> int:
        """Extend the leases held by ``owners`` (the worker's heartbeat); return how many."""
        if not owners:
            return 0
        with self._db.transaction() as cur:
            cur.execute(
                "UPDATE pipeline.edc_pipeline_file SET lease_until = %s"
                " WHERE lease_owner = ANY(%s) AND status = %s",
                (now + lease, list(owners), IN_PROGRESS),
            )
            return int(cur.rowcount)

    def release_job(self, job_id: int, owner: str, now: datetime, *, waiting_for_edc: bool) -> None:
        """Give the lease up so the next delivery can claim the job at once.

        Waiting for the EDC replica, nothing has been processed yet: back to Started. After a
        transient fault the job stays In Progress, without a lease.
        """
        status = STARTED if waiting_for_edc else IN_PROGRESS
        self._update_owned(
            job_id, owner, now, "status = %s, lease_owner = NULL, lease_until = NULL", (status,)
        )

    def record_edc(self, job_id: int, owner: str, record: EdcRecord, now: datetime) -> None:
        """Store what the EDC lookup found on the job row."""
        self._update_owned(
            job_id,
            owner,
            now,
            "subject_event_crf_file_id = %s, ddcrf_name = %s, ddfile_name = %s,"
            " participant_code = %s, event_code = %s, subjecteventcrf_id = %s, revision_number = %s",
            (
                record.subjecteventcrffile_id,
                record.ddcrf_name,
                record.ddfile_name,
                record.participant_code,
                record.event_code,
                record.subjecteventcrf_id,
                record.revision_number,
            ),
        )

    def reserve_destination(self, job_id: int, owner: str, bucket: str, key: str) -> tuple[str, str]:
        """The job's quarantine bucket and key: these the first time, the ones reserved earlier on
        a retry.

        Stored before the upload, so a retry after an upload whose job row was never completed
        finds the same place (and the object already there) even if the EDC values or
        ``DESTINATION_BUCKET`` changed since.
        """
        with self._db.transaction() as cur:
            cur.execute(
                "UPDATE pipeline.edc_pipeline_file SET destination_bucket = COALESCE(destination_bucket, %s),"
                " destination_key = COALESCE(destination_key, %s)"
                " WHERE id = %s AND lease_owner = %s AND status = %s"
                " RETURNING destination_bucket, destination_key",
                (bucket, key, job_id, owner, IN_PROGRESS),
            )
            row = cur.fetchone()
        if row is None:
            raise LeaseLostError(job_id)
        return str(row[0]), str(row[1])

    def reserved_destination(self, job_id: int) -> tuple[str, str] | None:
        """The quarantine bucket and key reserved for the job, if an attempt got that far."""
        with self._db.transaction() as cur:
            cur.execute(
                "SELECT destination_bucket, destination_key FROM pipeline.edc_pipeline_file"
                " WHERE id = %s AND destination_key IS NOT NULL",
                (job_id,),
            )
            row = cur.fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def complete_job(
        self, job_id: int, owner: str, errors: Sequence[ErrorEntry], now: datetime, result: JobResult
    ) -> None:
        """Completed, with its error rows, integrity record and true series rows, in one
        transaction; any error means has_error.

        The series rows were allocated from the scan; here they take the counts of what was
        stamped, and a series none of whose instances carries its ATRIUID loses its row.
        """
        code = errors[0].code if errors else None
        integrity = result.integrity
        with self._db.transaction() as cur:
            self._update_owned_in(
                cur,
                job_id,
                owner,
                now,
                "status = %s, has_error = %s, error_code = %s, completed_at = %s,"
                " lease_owner = NULL, lease_until = NULL, source_bytes = %s, source_sha256 = %s,"
                " quarantine_bytes = %s, quarantine_sha256 = %s, quarantine_s3_checksum = %s,"
                " members = %s, instances_stamped = %s, system_files = %s",
                (
                    COMPLETED,
                    code is not None,
                    code,
                    now,
                    integrity.source.size,
                    integrity.source.sha256,
                    integrity.quarantine.size if integrity.quarantine else None,
                    integrity.quarantine.sha256 if integrity.quarantine else None,
                    integrity.s3_checksum,
                    result.members,
                    result.instances_stamped,
                    result.system_files,
                ),
            )
            if result.series is not None:
                self._true_series(cur, job_id, result.series)
            self._insert_errors(cur, job_id, errors, now)

    def fail_job(
        self,
        job_id: int,
        owner: str,
        code: str,
        errors: Sequence[ErrorEntry],
        now: datetime,
        source: Fingerprint | None = None,
    ) -> None:
        """Failed (the file is not in quarantine), with its error rows, in one transaction.

        Series rows go too, unless the job ran out of deliveries after its quarantine key was
        reserved: an attempt may have written the object, which carries those ATRIUIDs, and a
        redrive completes the job. A permanent failure (another job's object at the key, say)
        keeps none.
        """
        with self._db.transaction() as cur:
            self._update_owned_in(
                cur,
                job_id,
                owner,
                now,
                "status = %s, has_error = true, error_code = %s, completed_at = %s,"
                " lease_owner = NULL, lease_until = NULL,"
                " source_bytes = COALESCE(%s, source_bytes), source_sha256 = COALESCE(%s, source_sha256)",
                (FAILED, code, now, source.size if source else None, source.sha256 if source else None),
            )
            cur.execute(
                "DELETE FROM pipeline.edc_pipeline_file_dicom d USING pipeline.edc_pipeline_file f"
                " WHERE d.edc_pipeline_file_id = %s AND f.id = d.edc_pipeline_file_id"
                " AND (f.destination_key IS NULL OR f.error_code <> %s)",
                (job_id, EXHAUSTED_CODE),
            )
            self._insert_errors(cur, job_id, errors, now)

    @staticmethod
    def _true_series(cur: Any, job_id: int, series: Sequence[SeriesSummary]) -> None:
        kept: list[int] = []
        for summary in series:
            cur.execute(
                "UPDATE pipeline.edc_pipeline_file_dicom SET number_of_instances = %s"
                " WHERE edc_pipeline_file_id = %s AND study_uid = %s AND series_uid = %s RETURNING id",
                (summary.number_of_instances, job_id, summary.key.study_uid, summary.key.series_uid),
            )
            kept.extend(row[0] for row in cur.fetchall())
        cur.execute(
            "DELETE FROM pipeline.edc_pipeline_file_dicom"
            " WHERE edc_pipeline_file_id = %s AND NOT id = ANY(%s)",
            (job_id, kept),
        )

    def _update_owned(
        self, job_id: int, owner: str, now: datetime, assignments: str, values: tuple[object, ...]
    ) -> None:
        with self._db.transaction() as cur:
            self._update_owned_in(cur, job_id, owner, now, assignments, values)

    @staticmethod
    def _update_owned_in(
        cur: Any, job_id: int, owner: str, now: datetime, assignments: str, values: tuple[object, ...]
    ) -> None:
        # Only the delivery holding the lease may change the job: a loser never overwrites.
        cur.execute(
            f"UPDATE pipeline.edc_pipeline_file SET {assignments}, updated_at = %s"
            " WHERE id = %s AND lease_owner = %s AND status = %s",
            (*values, now, job_id, owner, IN_PROGRESS),
        )
        if cur.rowcount != 1:
            raise LeaseLostError(job_id)

    @staticmethod
    def _insert_errors(cur: Any, job_id: int, errors: Sequence[ErrorEntry], now: datetime) -> None:
        for error in errors:
            cur.execute(
                "INSERT INTO pipeline.edc_pipeline_error (edc_pipeline_file_id, source_key, error_code,"
                " message, stage, member, created_at)"
                " SELECT id, source_key, %s, %s, %s, %s, %s FROM pipeline.edc_pipeline_file WHERE id = %s",
                (error.code, error.message, error.stage, error.member, now, job_id),
            )

    # -- series and errors -------------------------------------------------------------------
    def allocate_series(self, job_id: int, series: Sequence[SeriesSummary]) -> Mapping[SeriesKey, str]:
        """One ``edc_pipeline_file_dicom`` row per series and its ATRIUID ``{job}.{row}``.

        Idempotent: a retried job finds its rows and gets the same ATRIUIDs.
        """
        found: dict[SeriesKey, str] = {}
        with self._db.transaction() as cur:
            for summary in series:
                cur.execute(
                    "WITH next AS (SELECT nextval(pg_get_serial_sequence("
                    "   'pipeline.edc_pipeline_file_dicom', 'id')) AS id)"
                    " INSERT INTO pipeline.edc_pipeline_file_dicom (id, edc_pipeline_file_id,"
                    "   atri_uid, study_uid, series_uid, series_number, number_of_instances)"
                    " SELECT next.id, %(job)s, %(job)s || '.' || next.id, %(study)s, %(series)s,"
                    "   %(number)s, %(count)s FROM next"
                    " ON CONFLICT ON CONSTRAINT edc_pipeline_file_dicom_one_row_per_series"
                    " DO UPDATE SET series_number = EXCLUDED.series_number,"
                    "   number_of_instances = EXCLUDED.number_of_instances"
                    " RETURNING atri_uid",
                    {
                        "job": job_id,
                        "study": summary.key.study_uid,
                        "series": summary.key.series_uid,
                        "number": _as_integer_column(summary.series_number),
                        "count": summary.number_of_instances,
                    },
                )
                found[summary.key] = str(_one(cur.fetchone())[0])
        return found

    def record_error(
        self,
        job_id: int | None,
        source_key: str,
        code: str,
        message: str,
        stage: str,
        now: datetime,
        member: str | None = None,
    ) -> None:
        """One error row (``job_id`` None when the key fits no pipeline or layout)."""
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO pipeline.edc_pipeline_error (edc_pipeline_file_id, source_key,"
                " error_code, message, stage, member, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (job_id, source_key, code, message, stage, member, now),
            )

    # -- reprocess ---------------------------------------------------------------------------
    def execution(self, job_id: int, obj: ObjectCreated) -> tuple[Pipeline, Job] | None:
        """Job ``job_id`` and its pipeline (even one disabled since), if the job is of ``obj``'s
        object version; None when there is no such job or it is another file's."""
        with self._db.transaction() as cur:
            cur.execute(
                f"SELECT j.*, p.code, p.label, p.enabled, p.kind FROM (SELECT {_JOB_COLUMNS}"
                "   FROM pipeline.edc_pipeline_file WHERE id = %s AND source_bucket = %s"
                "   AND source_key = %s AND source_version = %s) j"
                " JOIN pipeline.edc_pipeline p ON p.id = j.edc_pipeline_id",
                (job_id, obj.bucket, obj.key, obj.version_or_etag),
            )
            row = cur.fetchone()
        if row is None:
            return None
        job = _job(row[:7])
        return Pipeline(job.pipeline_id, row[7], row[8], (), row[9], row[10]), job

    def stored_job(self, job_id: int) -> StoredJob | None:
        """Job ``job_id``, or None."""
        return next(iter(self._stored_jobs("f.id = %s", (job_id,))), None)

    def reprocess_of(self, job_id: int) -> StoredJob | None:
        """The execution that reprocesses job ``job_id``, if there is one (at most one)."""
        return next(iter(self._stored_jobs("f.reprocess_of = %s", (job_id,))), None)

    def first_execution(self, bucket: str, key: str, version: str) -> StoredJob | None:
        """The first job of an object version (version id, else ETag), or None."""
        where = (
            "f.source_bucket = %s AND f.source_key = %s AND f.source_version = %s AND f.reprocess_of IS NULL"
        )
        return next(iter(self._stored_jobs(where, (bucket, key, version))), None)

    def failed_jobs(
        self, code: str | None, since: datetime | None, pipeline_code: str | None
    ) -> list[StoredJob]:
        """Failed jobs not reprocessed yet, by id: with that error code, created since, of that
        pipeline (each None: any)."""
        return self._stored_jobs(
            "f.status = %s AND (%s::text IS NULL OR f.error_code = %s)"
            " AND (%s::timestamptz IS NULL OR f.created_at >= %s) AND (%s::text IS NULL OR p.code = %s)"
            " AND NOT EXISTS (SELECT 1 FROM pipeline.edc_pipeline_file r WHERE r.reprocess_of = f.id)",
            (FAILED, code, code, since, since, pipeline_code, pipeline_code),
        )

    def create_reprocess(self, job: StoredJob, now: datetime) -> tuple[StoredJob, bool]:
        """A new execution of ``job``'s file: status Started, its own id (so its own quarantine
        name), the same source version. A job is reprocessed at most once: when it was already,
        that execution is returned instead. True when the row was created now."""
        version_id, etag = job.exact_version
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO pipeline.edc_pipeline_file (edc_pipeline_id, source_bucket, source_key,"
                " source_version, source_version_id, source_etag, source_size, event_time, file_name,"
                " created_at, updated_at, reprocess_of)"
                " SELECT edc_pipeline_id, source_bucket, source_key, source_version, %s, %s, source_size,"
                "   %s, file_name, %s, %s, id FROM pipeline.edc_pipeline_file WHERE id = %s"
                " ON CONFLICT (reprocess_of) WHERE reprocess_of IS NOT NULL DO NOTHING RETURNING id",
                (version_id, etag, now, now, now, job.id),
            )
            created = cur.fetchone() is not None
        found = self.reprocess_of(job.id)
        if found is None:
            raise LookupError(f"job {job.id} does not exist")
        return found, created

    def _stored_jobs(self, where: str, params: tuple[object, ...]) -> list[StoredJob]:
        with self._db.transaction() as cur:
            cur.execute(f"{_STORED_JOBS} WHERE {where} ORDER BY f.id", params)
            rows = cur.fetchall()
        return [StoredJob(*row) for row in rows]

    def job_fields(self, job_id: int) -> dict[str, object]:
        """The job row as a dict (for error logs and notifications)."""
        with self._db.transaction() as cur:
            cur.execute("SELECT * FROM pipeline.edc_pipeline_file WHERE id = %s", (job_id,))
            row = _one(cur.fetchone())
            names = [d[0] for d in cur.description or ()]
        return dict(zip(names, row, strict=True))


def _as_integer_column(value: int | None) -> int | None:
    """A Series Number (IS, up to 12 digits) as the ``integer`` column holds it: out of range is
    unknown, never a refused statement that would retry the file until its deliveries run out."""
    return value if value is not None and -(2**31) <= value < 2**31 else None


def _job(row: tuple[Any, ...]) -> Job:
    job_id, pipeline_id, status, has_error, error_code, created_at, attempts = row
    return Job(
        int(job_id), int(pipeline_id), str(status), bool(has_error), error_code, created_at, int(attempts)
    )


def _one(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    if row is None:
        raise LookupError("expected a row")
    return row
