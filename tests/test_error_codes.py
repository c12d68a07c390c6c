"""The error dictionary follows the design's (CONTRACT section 7), and old rows are renumbered."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg2
import pytest

from service.db import Database
from service.edc import EdcLookup
from service.errors import ERROR_CODES, Outcome, RetryableError
from service.keys import SourceKey
from service.local.stack import create_database
from service.migrate import available_migrations, migrate

CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "CONTRACT.md"
# The design's dictionary as CONTRACT section 7 lists it; ERRL3001 is left blank there.
DESIGN_CODES = {
    "ERRL1001", "ERRL1002", "ERRL1003", "ERRL1004", "ERRL2001", "ERRL2002", "ERRL4001", "ERRL4002",
    "ERRL4003", "ERRL8001", "ERRS1001", "ERRS1002", "ERRS1003", "ERRS1004", "ERRS1005", "ERRS1006",
    "ERRS1007", "ERRS1008", "ERRS1009", "ERRS1010", "ERRS1011",
}  # fmt: skip


def test_every_situation_the_design_names_keeps_its_code() -> None:
    assert {c.code for c in ERROR_CODES.values() if c.design} == DESIGN_CODES
    if CONTRACT.exists():  # the shared contract sits beside the checkout on a developer's machine
        listed = set(re.findall(r"^\| (ERR[LS]\d{4}) \|", CONTRACT.read_text(), re.MULTILINE))
        assert DESIGN_CODES | {"ERRL3001"} == listed


def test_codes_are_numbered_by_stage_and_retrying_is_a_column_not_a_letter() -> None:
    for code in ERROR_CODES:
        assert re.fullmatch(r"ERR(L[1-48]|S1)\d{3}", code), code
    retried = {c.code[:4] for c in ERROR_CODES.values() if c.outcome is Outcome.RETRIED}
    permanent = {c.code[:4] for c in ERROR_CODES.values() if c.outcome is Outcome.PERMANENT}
    assert retried == permanent == {"ERRL", "ERRS"}


def test_old_codes_on_existing_rows_are_renumbered(postgres_admin_url: str) -> None:
    url = create_database(postgres_admin_url, "pipeline_t_renumber")
    db = Database(url, max_connections=1)
    try:
        first = available_migrations()[0]
        with db.transaction() as cur:  # a database as the previous release left it
            cur.execute(first.sql)
            cur.execute(
                "CREATE TABLE pipeline.schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("INSERT INTO pipeline.schema_migrations VALUES (1, %s)", (first.name,))
            cur.execute("INSERT INTO pipeline.edc_pipeline (code, label) VALUES ('P', 'p') RETURNING id")
            (pipeline_id,) = cur.fetchone()
            for n, code in enumerate(["ERRL1002", "ERRL2002", "ERRS1010", "ERRL3005"]):
                cur.execute(
                    "INSERT INTO pipeline.edc_pipeline_file (edc_pipeline_id, source_bucket, source_key,"
                    " source_version, event_time, file_name, created_at, updated_at, status, error_code)"
                    " VALUES (%s, 'b', %s, 'e', now(), 'f', now(), now(), 'Failed', %s) RETURNING id",
                    (pipeline_id, f"k{n}", code),
                )
                (job,) = cur.fetchone()
                cur.execute(
                    "INSERT INTO pipeline.edc_pipeline_error (edc_pipeline_file_id, error_code, message,"
                    " stage, created_at) VALUES (%s, %s, 'm', 's', now())",
                    (job, code),
                )
        assert 2 in migrate(db)
        with db.transaction() as cur:
            cur.execute("SELECT error_code FROM pipeline.edc_pipeline_file ORDER BY id")
            jobs = [r[0] for r in cur.fetchall()]
            cur.execute("SELECT error_code FROM pipeline.edc_pipeline_error ORDER BY id")
            errors = [r[0] for r in cur.fetchall()]
    finally:
        db.close()
    # Each renumbered once, never chained (old ERRL1002 is new ERRL2002, old ERRL2002 new ERRS1002).
    assert jobs == errors == ["ERRL2002", "ERRS1002", "ERRL8003", "ERRS1013"]


class _UnreachableDb:
    def transaction(self) -> object:
        raise psycopg2.OperationalError("could not connect to server")


class _RefusingDb:
    def transaction(self) -> object:
        raise psycopg2.errors.UndefinedTable("relation does not exist")


@pytest.mark.parametrize(("db", "code"), [(_UnreachableDb(), "ERRL1002"), (_RefusingDb(), "ERRL1004")])
def test_edc_connection_and_query_failures_have_the_designs_codes(db: object, code: str) -> None:
    lookup = EdcLookup(db, "SELECT 1")  # type: ignore[arg-type]
    with pytest.raises(RetryableError) as raised:
        lookup.lookup_crf_file(SourceKey(1, 101, "CT Scan", "v1", ".dcm"))
    assert raised.value.code == code
    assert ERROR_CODES[code].retryable
