"""Stage 3 and 6: the tracking store (pipeline schema): pipelines, jobs, series rows, errors.

Every method is one short transaction. Times come from the caller's clock, so a frozen clock
gives reproducible rows (the golden test relies on it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from service.db import Database
from service.edc import EdcRecord
from service.events import ObjectCreated
from service.processors.base import SeriesKey, SeriesSummary

STARTED, IN_PROGRESS, COMPLETED, FAILED = "Started", "In Progress", "Completed", "Failed"
# A job failed only because deliveries ran out; a redrive from the DLQ may run it again.
EXHAUSTED_CODE = "ERRS1010"


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A registered pipeline and the ddfile names it handles."""

    id: int
    code: str
    label: str
    ddfiles: tuple[str, ...]
    enabled: bool = True


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


class TrackingStore:
    """Reads and writes the ``pipeline`` schema. Database errors propagate to the caller."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- pipelines -------------------------------------------------------------------------
    def add_pipeline(self, code: str, label: str, ddfiles: Sequence[str]) -> Pipeline:
        """Register (or update) a pipeline and the ddfile names it handles.

        Raises ``ValueError`` if a ddfile already belongs to another pipeline.
        """
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO pipeline.edc_pipeline (code, label) VALUES (%s, %s)"
                " ON CONFLICT (code) DO UPDATE SET label = EXCLUDED.label RETURNING id",
                (code, label),
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
                "SELECT p.id, p.code, p.label, p.enabled,"
                " coalesce(array_agg(d.ddfile_name ORDER BY d.ddfile_name)"
                "   FILTER (WHERE d.ddfile_name IS NOT NULL), '{}')"
                " FROM pipeline.edc_pipeline p"
                " LEFT JOIN pipeline.edc_pipeline_ddfile d ON d.edc_pipeline_id = p.id"
                " GROUP BY p.id ORDER BY p.code"
            )
            rows = cur.fetchall()
        return [Pipeline(r[0], r[1], r[2], tuple(r[4]), r[3]) for r in rows]

    def pipeline_by_code(self, code: str) -> Pipeline | None:
        """The pipeline called ``code``, or None."""
        return next((p for p in self.list_pipelines() if p.code == code), None)

    def pipeline_for_ddfile(self, ddfile_name: str) -> Pipeline | None:
        """The enabled pipeline that handles ``ddfile_name``, or None (the file is ignored)."""
        with self._db.transaction() as cur:
            cur.execute(
                "SELECT p.id, p.code, p.label FROM pipeline.edc_pipeline_ddfile d"
                " JOIN pipeline.edc_pipeline p ON p.id = d.edc_pipeline_id"
                " WHERE d.ddfile_name = %s AND p.enabled",
                (ddfile_name,),
            )
            row = cur.fetchone()
        return Pipeline(row[0], row[1], row[2], (ddfile_name,)) if row else None

    # -- jobs ------------------------------------------------------------------------------
    def open_job(self, pipeline: Pipeline, obj: ObjectCreated, file_name: str, now: datetime) -> Job:
        """The job of this object version: created on first delivery, found on every later one."""
        with self._db.transaction() as cur:
            cur.execute(
                "INSERT INTO pipeline.edc_pipeline_file (edc_pipeline_id, source_bucket, source_key,"
                " source_version, source_size, event_time, file_name, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT ON CONSTRAINT edc_pipeline_file_one_job_per_version DO NOTHING",
                (
                    pipeline.id,
                    obj.bucket,
                    obj.key,
                    obj.version_or_etag,
                    obj.size,
                    obj.event_time,
                    file_name,
                    now,
                    now,
                ),
            )
            cur.execute(
                f"SELECT {_JOB_COLUMNS} FROM pipeline.edc_pipeline_file"
                " WHERE source_bucket = %s AND source_key = %s AND source_version = %s",
                (obj.bucket, obj.key, obj.version_or_etag),
            )
            return _job(_one(cur.fetchone()))

    def claim_job(self, job_id: int, owner: str, now: datetime, lease: timedelta) -> bool:
        """Mark the job In Progress for ``owner`` (an SQS message id) unless another delivery holds it.

        A job can be claimed when it is Started, when its lease ran out, when the same message
        comes back (its earlier attempt died), or when it failed only because deliveries ran out.
        """
        with self._db.transaction() as cur:
            cur.execute(
                "UPDATE pipeline.edc_pipeline_file SET status = %s, lease_owner = %s,"
                " lease_until = %s, attempts = attempts + 1, updated_at = %s"
                " WHERE id = %s AND (status = %s OR lease_owner = %s OR lease_until < %s"
                "   OR (status = %s AND error_code = %s))"
                " AND status <> %s",
                (
                    IN_PROGRESS,
                    owner,
                    now + lease,
                    now,
                    job_id,
                    STARTED,
                    owner,
                    now,
                    FAILED,
                    EXHAUSTED_CODE,
                    COMPLETED,
                ),
            )
            return bool(cur.rowcount == 1)

    def release_job(self, job_id: int, now: datetime) -> None:
        """Back to Started without a lease (waiting for the EDC replica)."""
        self._set(job_id, now, "status = %s, lease_owner = NULL, lease_until = NULL", (STARTED,))

    def record_edc(self, job_id: int, record: EdcRecord, now: datetime) -> None:
        """Store what the EDC lookup found on the job row."""
        self._set(
            job_id,
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

    def complete_job(self, job_id: int, bucket: str, key: str, error_code: str | None, now: datetime) -> None:
        """Completed: the file is in quarantine; ``error_code`` set means Completed + has_error."""
        self._set(
            job_id,
            now,
            "status = %s, destination_bucket = %s, destination_key = %s, has_error = %s,"
            " error_code = %s, completed_at = %s, lease_owner = NULL, lease_until = NULL",
            (COMPLETED, bucket, key, error_code is not None, error_code, now),
        )

    def fail_job(self, job_id: int, error_code: str, now: datetime) -> None:
        """Failed: the file is not in quarantine."""
        self._set(
            job_id,
            now,
            "status = %s, has_error = true, error_code = %s, completed_at = %s,"
            " lease_owner = NULL, lease_until = NULL",
            (FAILED, error_code, now),
        )

    def _set(self, job_id: int, now: datetime, assignments: str, values: tuple[object, ...]) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                f"UPDATE pipeline.edc_pipeline_file SET {assignments}, updated_at = %s WHERE id = %s",
                (*values, now, job_id),
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
                        "number": summary.series_number,
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

    def job_fields(self, job_id: int) -> dict[str, object]:
        """The job row as a dict (for error logs and notifications)."""
        with self._db.transaction() as cur:
            cur.execute("SELECT * FROM pipeline.edc_pipeline_file WHERE id = %s", (job_id,))
            row = _one(cur.fetchone())
            names = [d[0] for d in cur.description or ()]
        return dict(zip(names, row, strict=True))


def _job(row: tuple[Any, ...]) -> Job:
    job_id, pipeline_id, status, has_error, error_code, created_at, attempts = row
    return Job(
        int(job_id), int(pipeline_id), str(status), bool(has_error), error_code, created_at, int(attempts)
    )


def _one(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    if row is None:
        raise LookupError("expected a row")
    return row
