"""Stage 2: look an uploaded file up in the EDC read replica.

The query is one SQL file (``service/sql/edc_lookup.sql``), replaceable with ``EDC_LOOKUP_SQL``
for an EDC whose schema differs from the reference one. The session is read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg2

from service.db import Database
from service.errors import PermanentError, RetryableError, Stage
from service.keys import SourceKey
from service.retry import is_transient_db_error

_COLUMNS = (
    "ddcrf_name",
    "ddfile_name",
    "participant_code",
    "event_code",
    "subjecteventcrf_id",
    "revision_number",
    "subjecteventcrffile_id",
)


@dataclass(frozen=True, slots=True)
class EdcRecord:
    """What the EDC knows about one uploaded file."""

    ddcrf_name: str
    ddfile_name: str
    participant_code: str
    event_code: str
    subjecteventcrf_id: int
    revision_number: int
    subjecteventcrffile_id: int


def load_lookup_sql(path: Path | None) -> str:
    """The lookup query: the file at ``path`` or the bundled reference one."""
    if path is not None:
        return path.read_text(encoding="utf-8")
    return resources.files("service.sql").joinpath("edc_lookup.sql").read_text(encoding="utf-8")


class EdcLookup:
    """Runs the lookup query against the read replica."""

    def __init__(self, db: Database, sql: str) -> None:
        self._db = db
        self._sql = sql

    def lookup_crf_file(self, key: SourceKey) -> EdcRecord | None:
        """The record for ``key``, or None when the replica does not have it (yet).

        Raises ``PermanentError`` ERRL1005 for several matches, ``RetryableError`` ERRL1002 when
        the replica cannot be reached, ERRL1004 when the query fails.
        """
        params = {
            "subject_id": key.subject_id,
            "subjecteventcrf_id": key.subjecteventcrf_id,
            "ddfile_name": key.ddfile_name,
            "version_code": key.version_code,
        }
        try:
            with self._db.transaction() as cur:
                cur.execute(self._sql, params)
                rows = cur.fetchmany(2)
                names = [d[0] for d in cur.description or ()]
        except psycopg2.Error as exc:
            if is_transient_db_error(exc):
                raise RetryableError(
                    "ERRL1002", f"EDC replica unreachable ({type(exc).__name__})", Stage.EDC_LOOKUP
                ) from exc
            raise RetryableError(
                "ERRL1004", f"EDC query failed ({type(exc).__name__})", Stage.EDC_LOOKUP
            ) from exc
        if not rows:
            return None
        if len(rows) > 1:
            raise PermanentError("ERRL1005", "several EDC rows match the file", Stage.EDC_LOOKUP)
        row = dict(zip(names, rows[0], strict=True))
        missing = [c for c in _COLUMNS if c not in row]
        if missing:
            raise RetryableError("ERRL1004", f"EDC lookup SQL lacks columns {missing}", Stage.EDC_LOOKUP)
        return EdcRecord(
            ddcrf_name=str(row["ddcrf_name"]),
            ddfile_name=str(row["ddfile_name"]),
            participant_code=str(row["participant_code"]),
            event_code=str(row["event_code"]),
            subjecteventcrf_id=int(row["subjecteventcrf_id"]),
            revision_number=int(row["revision_number"]),
            subjecteventcrffile_id=int(row["subjecteventcrffile_id"]),
        )
