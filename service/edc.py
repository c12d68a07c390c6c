"""Stage 2: look an uploaded file up in the EDC read replica.

The query is one SQL file (``service/sql/edc_lookup.sql``), replaceable with ``EDC_LOOKUP_SQL``
for an EDC whose schema differs from the reference one. The session is read-only.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg2

from service.breaker import Dependency
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
    """What the EDC knows about one uploaded file. A NULL (or blank) column is ``None``, never
    the text "None": the quarantine name refuses it (ERRL4001), error logs show NA."""

    ddcrf_name: str | None
    ddfile_name: str | None
    participant_code: str | None
    event_code: str | None
    subjecteventcrf_id: int | None
    revision_number: int | None
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
                    "ERRL1002",
                    f"EDC replica unreachable ({type(exc).__name__})",
                    Stage.EDC_LOOKUP,
                    dependency=Dependency.EDC_REPLICA,
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
        if row["subjecteventcrffile_id"] is None:
            raise RetryableError(
                "ERRL1004", "EDC lookup returned no subjecteventcrffile_id", Stage.EDC_LOOKUP
            )
        return EdcRecord(
            ddcrf_name=_text(row["ddcrf_name"]),
            ddfile_name=_text(row["ddfile_name"]),
            participant_code=_text(row["participant_code"]),
            event_code=_text(row["event_code"]),
            subjecteventcrf_id=_number(row["subjecteventcrf_id"]),
            revision_number=_number(row["revision_number"]),
            subjecteventcrffile_id=int(row["subjecteventcrffile_id"]),
        )


def _text(value: object) -> str | None:
    text = None if value is None else str(value).strip()
    return text or None


def _number(value: object) -> int | None:
    return None if value is None else int(str(value))
