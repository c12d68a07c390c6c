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
from service.processors.directory import KNOWN_EXTENSIONS

# The live contract: beside the checkout (../shared), or where this workplace keeps it for a clone
# made elsewhere (CI clones main into a temporary directory).
CONTRACT = next(
    (
        path
        for path in (
            Path(__file__).resolve().parents[2] / "shared" / "CONTRACT.md",
            Path("/work/shared/CONTRACT.md"),
        )
        if path.exists()
    ),
    Path(__file__).resolve().parents[2] / "shared" / "CONTRACT.md",
)
# CONTRACT section 7's table, vendored so the check runs on any checkout (../shared may be absent).
VENDORED = Path(__file__).resolve().parent / "golden" / "contract_errors.md"
_ROW = re.compile(r"^\| (ERR[LS]\d{4}) \| (.+) \|$", re.MULTILINE)


def _table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("|")]


def test_every_situation_the_design_names_keeps_its_code() -> None:
    situations = dict(_ROW.findall(VENDORED.read_text()))
    assert len(situations) == 22  # the dictionary as CONTRACT section 7 lists it
    blank = {code for code, situation in situations.items() if situation == "(left blank)"}
    assert blank == {"ERRL3001"}  # unused here: a code the design leaves blank means nothing
    assert {c.code for c in ERROR_CODES.values() if c.design} == set(situations) - blank
    assert not blank & set(ERROR_CODES)


def test_the_vendored_dictionary_is_the_live_contracts_section_7() -> None:
    if not CONTRACT.exists():
        pytest.skip("no CONTRACT.md beside this checkout or in /work/shared; the vendored copy stands")
    text = CONTRACT.read_text()
    section = text[text.index("\n## 7.") : text.index("\n## 8.")]
    assert _table_lines(section) == _table_lines(VENDORED.read_text())


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


# (member, message) as each release wrote them, and what jobs show must print after migration 6.
OLD_MEMBER_ROWS = [
    # until eb54e0e: any short suffix, also a birth date
    (("#3.19650312", "member (extension '.19650312') is a nested archive; carried over unchanged"),
     ("#3", "member #3 is a nested archive; carried over unchanged")),
    ((None, "member (extension '.19650312') is encrypted"), (None, "member is encrypted")),
    ((None, "member (no extension) is absolute or escapes the archive"),
     (None, "member is absolute or escapes the archive")),
    (("#2.dcm", "member (extension '.dcm') expands past the declared or allowed size"),
     ("#2.dcm", "member #2.dcm expands past the declared or allowed size")),
    # until 1372606: the member's name itself, as a Python repr in messages
    (("DOE^JOHN/IM1", "file is not DICOM; carried over unchanged"),
     ("#?", "file is not DICOM; carried over unchanged")),
    ((None, "member 'DOE^JOHN/19650312/IM1' is encrypted"), (None, "member is encrypted")),
    ((None, "member \"O'BRIEN^PAT/IM2\" is a nested archive"), (None, "member is a nested archive")),
    # today's labels stay as they are
    (("#4.txt", "member #4.txt has the name of member #1; both carried over"),
     ("#4.txt", "member #4.txt has the name of member #1; both carried over")),
    (("#5", "zip member is not DICOM"), ("#5", "zip member is not DICOM")),
]  # fmt: skip


def test_member_names_and_suffixes_on_existing_rows_are_relabelled(postgres_admin_url: str) -> None:
    url = create_database(postgres_admin_url, "pipeline_t_member_labels")
    db = Database(url, max_connections=1)
    try:
        with db.transaction() as cur:  # a database as the release before migration 6 left it
            cur.execute(
                "CREATE SCHEMA pipeline; CREATE TABLE pipeline.schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for migration in available_migrations():
                if migration.version < 6:
                    cur.execute(migration.sql)
                    cur.execute(
                        "INSERT INTO pipeline.schema_migrations VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
            for (member, message), _ in OLD_MEMBER_ROWS:
                cur.execute(
                    "INSERT INTO pipeline.edc_pipeline_error (error_code, message, stage, member, created_at)"
                    " VALUES ('ERRS1013', %s, 'process', %s, now())",
                    (message, member),
                )
        assert migrate(db) == [6]
        with db.transaction() as cur:
            cur.execute("SELECT member, message FROM pipeline.edc_pipeline_error ORDER BY id")
            rows = [tuple(r) for r in cur.fetchall()]
    finally:
        db.close()
    assert rows == [after for _, after in OLD_MEMBER_ROWS]
    assert not any("1965" in (m or "") + t or "DOE" in t or "BRIEN" in t for m, t in rows)


def test_the_relabelling_migration_keeps_only_known_extensions() -> None:
    sql = next(m.sql for m in available_migrations() if m.version == 6)
    kept = re.search(r"NOT IN \(([^)]*)\)", sql)
    assert kept is not None
    assert set(re.findall(r"'([^']+)'", kept[1])) <= KNOWN_EXTENSIONS
