"""Read-only queries over the tracking tables, for the operator commands ``jobs`` and ``inventory``.

Each call is one short transaction on a read-only session. The inventory pages through the files
by id (keyset pagination), so an export of any size holds one page in memory and keeps no
transaction open between pages. The participant code is never selected: it is PHI-adjacent and no
listing shows it (the quarantine key, the labs' own file name, carries it). Database errors
propagate to the caller; the CLI turns a connection failure into one line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from service.errors import ERROR_CODES
from service.tracking import COMPLETED, FAILED, IN_PROGRESS, STARTED

if TYPE_CHECKING:
    from service.config import Settings
    from service.db import Database

STATUSES = (STARTED, IN_PROGRESS, COMPLETED, FAILED)
UNSETTLED = (STARTED, IN_PROGRESS)


@dataclass(frozen=True, slots=True)
class StuckRule:
    """A job is stuck at ``now`` when it is unsettled, holds no live lease and nobody has touched it
    for longer than ``grace``: a retry or a replica-lag wait would have come back by then."""

    now: datetime
    grace: timedelta
    basis: str = ""  # where ``grace`` comes from, for the operator

    @classmethod
    def from_settings(
        cls, settings: Settings, now: datetime, older_than: timedelta | None = None
    ) -> StuckRule:
        """The rule with ``older_than``, or else the grace the worker's settings imply:
        ``max(RETRY_BACKOFF_MAX_S, REPLICA_LAG_INTERVAL_S) + 2 * VISIBILITY_TIMEOUT_S``."""
        if older_than is not None:
            return cls(now, older_than, "--older-than")
        longest_wait = max(settings.retry_backoff_max_s, settings.replica_lag_interval_s)
        basis = (
            f"max(RETRY_BACKOFF_MAX_S={settings.retry_backoff_max_s},"
            f" REPLICA_LAG_INTERVAL_S={settings.replica_lag_interval_s})"
            f" + 2 * VISIBILITY_TIMEOUT_S={settings.visibility_timeout_s}"
        )
        return cls(now, timedelta(seconds=longest_wait + 2 * settings.visibility_timeout_s), basis)

    @property
    def untouched_before(self) -> datetime:
        """A stuck job's ``updated_at`` is earlier than this."""
        return self.now - self.grace

    def applies(self, status: str, lease_until: datetime | None, updated_at: datetime) -> bool:
        """The rule for one row (the SQL of ``list_jobs`` says the same)."""
        lease_dead = lease_until is None or lease_until < self.now
        return status in UNSETTLED and lease_dead and updated_at < self.untouched_before


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What ``jobs list`` asks for; ``None`` is no condition. Newest first, at most ``limit``."""

    status: str | None = None
    since: datetime | None = None  # created at or after
    pipeline_code: str | None = None
    error_code: str | None = None  # the job's code, or any of its error rows'
    stuck: StuckRule | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One line of ``jobs list``."""

    id: int
    pipeline_code: str
    status: str
    has_error: bool
    error_code: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    reprocess_of: int | None
    file_name: str
    size: int | None  # bytes the worker read, else the size the S3 event announced
    reprocessed_by: int | None  # the execution that reprocessed this job, if any


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """One ``edc_pipeline_file_dicom`` row: a series as stamped."""

    atri_uid: str
    study_uid: str
    series_uid: str
    series_number: int | None
    number_of_instances: int


@dataclass(frozen=True, slots=True)
class ErrorRow:
    """One ``edc_pipeline_error`` row of a job."""

    created_at: datetime
    code: str
    stage: str
    member: str | None  # by position ("#2.txt"), never by name
    message: str

    @property
    def meaning(self) -> str:
        """The dictionary's meaning of the code (a code no longer in the dictionary says so)."""
        entry = ERROR_CODES.get(self.code)
        return entry.meaning if entry else "(not in the error dictionary)"


@dataclass(frozen=True, slots=True)
class JobDetail:
    """Everything ``jobs show`` tells about one job."""

    id: int
    pipeline_code: str
    pipeline_label: str
    pipeline_kind: str
    status: str
    has_error: bool
    error_code: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    event_time: datetime
    source_bucket: str
    source_key: str
    source_version: str
    source_version_id: str | None
    source_etag: str | None
    source_size: int | None
    file_name: str
    subject_event_crf_file_id: int | None
    subjecteventcrf_id: int | None
    revision_number: int | None
    ddcrf_name: str | None
    ddfile_name: str | None
    event_code: str | None
    lease_owner: str | None
    lease_until: datetime | None
    destination_bucket: str | None
    destination_key: str | None
    source_bytes: int | None
    source_sha256: str | None
    quarantine_bytes: int | None
    quarantine_sha256: str | None
    quarantine_s3_checksum: str | None
    members: int | None
    instances_stamped: int | None
    system_files: int | None
    reprocess_of: int | None
    reprocessed_by: int | None
    series: tuple[SeriesRow, ...] = ()
    errors: tuple[ErrorRow, ...] = ()


@dataclass(frozen=True, slots=True)
class InventoryFile:
    """One file of the image inventory, with its series."""

    pipeline_code: str
    pipeline_file_id: int
    reprocess_of: int | None
    status: str
    has_error: bool
    error_code: str | None
    created_at: datetime
    completed_at: datetime | None
    subject_event_crf_file_id: int | None
    subjecteventcrf_id: int | None
    revision_number: int | None
    ddcrf_name: str | None
    ddfile_name: str | None
    event_code: str | None
    destination_bucket: str | None
    destination_key: str | None
    source_bytes: int | None
    source_sha256: str | None
    quarantine_bytes: int | None
    quarantine_sha256: str | None
    members: int | None
    instances_stamped: int | None
    series: tuple[SeriesRow, ...] = ()


@dataclass(frozen=True, slots=True)
class PipelineInfo:
    """A registered pipeline, as the inventory describes it."""

    code: str
    label: str
    kind: str
    ddfiles: tuple[str, ...]


def _columns(cls: type[Any], *, skip: Sequence[str] = ()) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name not in skip)


SERIES_COLUMNS = _columns(SeriesRow)
INVENTORY_FILE_COLUMNS = _columns(InventoryFile, skip=("series",))

_REPROCESSED_BY = "SELECT r.id FROM pipeline.edc_pipeline_file r WHERE r.reprocess_of = f.id"
_LIST_SQL = (
    "SELECT f.id, p.code, f.status, f.has_error, f.error_code, f.attempts, f.created_at, f.updated_at,"
    " f.reprocess_of, f.file_name, COALESCE(f.source_bytes, f.source_size),"
    f" ({_REPROCESSED_BY})"
    " FROM pipeline.edc_pipeline_file f JOIN pipeline.edc_pipeline p ON p.id = f.edc_pipeline_id"
)
# One fragment per condition of JobFilter; only these constants are ever joined into the SQL.
_STATUS_IS = "f.status = %(status)s"
_CREATED_SINCE = "f.created_at >= %(since)s"
_PIPELINE_IS = "p.code = %(pipeline)s"
_HAS_CODE = (
    "(f.error_code = %(code)s OR EXISTS (SELECT 1 FROM pipeline.edc_pipeline_error e"
    " WHERE e.edc_pipeline_file_id = f.id AND e.error_code = %(code)s))"
)
_IS_STUCK = (
    "f.status = ANY(%(unsettled)s) AND (f.lease_until IS NULL OR f.lease_until < %(now)s)"
    " AND f.updated_at < %(untouched_before)s"
)

_DETAIL_SQL = (
    "SELECT f.id, p.code AS pipeline_code, p.label AS pipeline_label, p.kind AS pipeline_kind,"
    " f.status, f.has_error, f.error_code, f.attempts, f.created_at, f.updated_at, f.completed_at,"
    " f.event_time, f.source_bucket, f.source_key, f.source_version, f.source_version_id, f.source_etag,"
    " f.source_size, f.file_name, f.subject_event_crf_file_id, f.subjecteventcrf_id, f.revision_number,"
    " f.ddcrf_name, f.ddfile_name, f.event_code, f.lease_owner, f.lease_until, f.destination_bucket,"
    " f.destination_key, f.source_bytes, f.source_sha256, f.quarantine_bytes, f.quarantine_sha256,"
    " f.quarantine_s3_checksum, f.members, f.instances_stamped, f.system_files, f.reprocess_of,"
    f" ({_REPROCESSED_BY}) AS reprocessed_by"
    " FROM pipeline.edc_pipeline_file f JOIN pipeline.edc_pipeline p ON p.id = f.edc_pipeline_id"
    " WHERE f.id = %s"
)
_SERIES_SQL = (
    "SELECT edc_pipeline_file_id, atri_uid, study_uid, series_uid, series_number, number_of_instances"
    " FROM pipeline.edc_pipeline_file_dicom WHERE edc_pipeline_file_id = ANY(%s)"
    " ORDER BY edc_pipeline_file_id, id"
)
_ERRORS_SQL = (
    "SELECT created_at, error_code, stage, member, message FROM pipeline.edc_pipeline_error"
    " WHERE edc_pipeline_file_id = %s ORDER BY created_at, id"
)
_INVENTORY_SQL = (
    "SELECT p.code, f.id, f.reprocess_of, f.status, f.has_error, f.error_code, f.created_at,"
    " f.completed_at, f.subject_event_crf_file_id, f.subjecteventcrf_id, f.revision_number, f.ddcrf_name,"
    " f.ddfile_name, f.event_code, f.destination_bucket, f.destination_key, f.source_bytes,"
    " f.source_sha256, f.quarantine_bytes, f.quarantine_sha256, f.members, f.instances_stamped"
    " FROM pipeline.edc_pipeline_file f JOIN pipeline.edc_pipeline p ON p.id = f.edc_pipeline_id"
    " WHERE f.id > %(after)s"
    " AND (%(since)s::timestamptz IS NULL OR f.created_at >= %(since)s::timestamptz)"
    " AND (%(pipeline)s::text IS NULL OR p.code = %(pipeline)s::text)"
    " ORDER BY f.id LIMIT %(page)s"
)
_PIPELINES_SQL = (
    "SELECT p.code, p.label, p.kind,"
    " coalesce(array_agg(d.ddfile_name ORDER BY d.ddfile_name)"
    "   FILTER (WHERE d.ddfile_name IS NOT NULL), '{}')"
    " FROM pipeline.edc_pipeline p"
    " LEFT JOIN pipeline.edc_pipeline_ddfile d ON d.edc_pipeline_id = p.id"
    " GROUP BY p.id ORDER BY p.code"
)


class JobQueries:
    """Read-only views of the ``pipeline`` schema for operators. Never writes."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def pipelines(self) -> list[PipelineInfo]:
        """Every registered pipeline with its ddfile names, by code."""
        with self._db.transaction() as cur:
            cur.execute(_PIPELINES_SQL)
            return [PipelineInfo(r[0], r[1], r[2], tuple(r[3])) for r in cur.fetchall()]

    def list_jobs(self, wanted: JobFilter) -> list[JobSummary]:
        """The jobs matching every condition of ``wanted``, newest first."""
        conditions: list[str] = []
        params: dict[str, object] = {"limit": wanted.limit}
        if wanted.status is not None:
            conditions.append(_STATUS_IS)
            params["status"] = wanted.status
        if wanted.since is not None:
            conditions.append(_CREATED_SINCE)
            params["since"] = wanted.since
        if wanted.pipeline_code is not None:
            conditions.append(_PIPELINE_IS)
            params["pipeline"] = wanted.pipeline_code
        if wanted.error_code is not None:
            conditions.append(_HAS_CODE)
            params["code"] = wanted.error_code
        if wanted.stuck is not None:
            conditions.append(_IS_STUCK)
            params.update(
                unsettled=list(UNSETTLED),
                now=wanted.stuck.now,
                untouched_before=wanted.stuck.untouched_before,
            )
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._db.transaction() as cur:
            cur.execute(f"{_LIST_SQL}{where} ORDER BY f.created_at DESC, f.id DESC LIMIT %(limit)s", params)
            return [JobSummary(*row) for row in cur.fetchall()]

    def job(self, job_id: int) -> JobDetail | None:
        """One job with its series, errors and reprocess relations; None if there is no such job."""
        with self._db.transaction() as cur:
            cur.execute(_DETAIL_SQL, (job_id,))
            row = cur.fetchone()
            if row is None:
                return None
            names = [d[0] for d in cur.description or ()]
            cur.execute(_SERIES_SQL, ([job_id],))
            series = tuple(SeriesRow(*r[1:]) for r in cur.fetchall())
            cur.execute(_ERRORS_SQL, (job_id,))
            errors = tuple(ErrorRow(*r) for r in cur.fetchall())
        return JobDetail(**dict(zip(names, row, strict=True)), series=series, errors=errors)

    def inventory(
        self, *, since: datetime | None = None, pipeline_code: str | None = None, page_size: int = 500
    ) -> Iterator[InventoryFile]:
        """Every file (oldest first, by id) with its series, one page of ``page_size`` at a time."""
        after = 0
        while True:
            with self._db.transaction() as cur:
                cur.execute(
                    _INVENTORY_SQL,
                    {"after": after, "since": since, "pipeline": pipeline_code, "page": page_size},
                )
                rows = cur.fetchall()
                if not rows:
                    return
                ids = [int(r[1]) for r in rows]
                cur.execute(_SERIES_SQL, (ids,))
                series: dict[int, list[SeriesRow]] = {}
                for r in cur.fetchall():
                    series.setdefault(int(r[0]), []).append(SeriesRow(*r[1:]))
            for row in rows:
                found = dict(zip(INVENTORY_FILE_COLUMNS, row, strict=True))
                yield InventoryFile(**found, series=tuple(series.get(int(row[1]), ())))
            if len(rows) < page_size:
                return
            after = ids[-1]
