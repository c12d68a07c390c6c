"""``jobs list``, ``jobs show`` and ``inventory export`` as an operator sees them.

The jobs come from the worker over real uploads (moto's server, a real PostgreSQL); the states a
test cannot wait for (a stuck job, a live lease, a reprocess, exhausted deliveries) are rows
inserted with SQL beside them. The commands only read, so one stack serves the whole module.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from service.config import Settings
from service.db import Database
from service.jobquery import JobQueries, StuckRule
from service.local.samples import bundled_file, write_mixed_zip, write_not_dicom, write_series_zip
from service.timeargs import parse_duration
from tests.stackfixtures import TestStack, make_stack

CT_KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"  # EDC row 1001: completed single file
MRI_ZIP_KEY = "subjecteventcrffile/2/102/MRI Series/v1.zip"  # 1002: the 7-instance series zip
BAD_KEY = "subjecteventcrffile/1/101/CT Scan/v2.dcm"  # 1003: a text file, ERRS1012
MIXED_KEY = "subjecteventcrffile/2/102/CT Scan/v1.zip"  # 1004: zip with a non-DICOM member
NEVER_KEY = "subjecteventcrffile/1/101/CT Scan/never.dcm"  # no EDC record: ERRL1003
PATIENT_NAME = "Doe^Peter"  # in pydicom's sample files; the service never stores it
PARTICIPANTS = ("P-001", "P-002")
REPROCESS = "python -m service reprocess --file-id {}"


@dataclass
class Produced:
    """The module's stack and its jobs by name."""

    stack: TestStack
    ids: dict[str, int]

    def row(self, name: str) -> dict[str, Any]:
        (found,) = self.stack.query(
            "SELECT * FROM pipeline.edc_pipeline_file WHERE id = %s", (self.ids[name],)
        )
        return found

    def series(self, name: str) -> list[dict[str, Any]]:
        return self.stack.query(
            "SELECT * FROM pipeline.edc_pipeline_file_dicom WHERE edc_pipeline_file_id = %s ORDER BY id",
            (self.ids[name],),
        )


def _insert_job(stack: TestStack, pipeline_code: str, key: str, **columns: Any) -> int:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "source_bucket": stack.names.source_bucket,
        "source_key": key,
        "source_version": f"etag-{key}",
        "event_time": now,
        "file_name": key.rsplit("/", 1)[-1],
        "created_at": now,
        "updated_at": now,
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join(["%s"] * len(values))
    (row,) = stack.query(
        f"INSERT INTO pipeline.edc_pipeline_file (edc_pipeline_id, {names})"
        f" SELECT id, {marks} FROM pipeline.edc_pipeline WHERE code = %s RETURNING id",
        (*values.values(), pipeline_code),
    )
    return int(row["id"])


@pytest.fixture(scope="module")
def produced(
    moto_endpoint: str, postgres_admin_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Produced]:
    stack = make_stack(moto_endpoint, postgres_admin_url)
    tmp = tmp_path_factory.mktemp("uploads")
    uploads = {
        "single": (CT_KEY, bundled_file("CT_small.dcm")),
        "zip": (MRI_ZIP_KEY, write_series_zip(tmp / "series.zip")),
        "mixed": (MIXED_KEY, write_mixed_zip(tmp / "mixed.zip")),
        "bad": (BAD_KEY, write_not_dicom(tmp / "bad.dcm")),
        "never": (NEVER_KEY, bundled_file("CT_small.dcm")),
    }
    with stack.worker():
        for key, path in uploads.values():
            stack.upload(key, path)
        jobs = stack.wait_settled(len(uploads), timeout=60)
    ids = {name: next(j["id"] for j in jobs if j["source_key"] == key) for name, (key, _) in uploads.items()}

    now = datetime.now(UTC)
    hours = timedelta(hours=1)
    ids["stuck"] = _insert_job(
        stack,
        "IMAGING",
        "subjecteventcrffile/1/101/CT Scan/stuck.dcm",
        status="In Progress",
        attempts=2,
        lease_owner="msg-gone:2",
        lease_until=now - hours,
        created_at=now - 3 * hours,
        updated_at=now - 2 * hours,
    )
    ids["live"] = _insert_job(  # untouched as long, but its lease is live: a slow job, not a stuck one
        stack,
        "IMAGING",
        "subjecteventcrffile/1/101/CT Scan/live.dcm",
        status="In Progress",
        attempts=1,
        lease_owner="msg-busy:1",
        lease_until=now + 10 * timedelta(minutes=1),
        created_at=now - 3 * hours,
        updated_at=now - 2 * hours,
    )
    ids["stuck_done"] = _insert_job(  # stuck as well, but an operator has reprocessed it already
        stack,
        "IMAGING",
        "subjecteventcrffile/1/101/CT Scan/stuck2.dcm",
        status="In Progress",
        lease_until=now - hours,
        created_at=now - 4 * hours,
        updated_at=now - 4 * hours,
    )
    ids["stuck_rerun"] = _insert_job(
        stack,
        "IMAGING",
        "subjecteventcrffile/1/101/CT Scan/stuck2.dcm",
        source_version="etag-subjecteventcrffile/1/101/CT Scan/stuck2.dcm",
        reprocess_of=ids["stuck_done"],
        status="Failed",
        has_error=True,
        error_code="ERRL1003",
        completed_at=now,
    )
    ids["exhausted"] = _insert_job(
        stack,
        "IMAGING",
        "subjecteventcrffile/1/101/CT Scan/dlq.dcm",
        status="Failed",
        has_error=True,
        error_code="ERRL8003",
        attempts=40,
        created_at=now - 5 * hours,
        updated_at=now - 4 * hours,
        completed_at=now - 4 * hours,
    )
    bad = stack.query("SELECT * FROM pipeline.edc_pipeline_file WHERE id = %s", (ids["bad"],))[0]
    ids["reprocess"] = _insert_job(
        stack,
        "IMAGING",
        BAD_KEY,
        source_version=bad["source_version"],
        reprocess_of=ids["bad"],
        status="Started",
    )
    stack.query(
        "INSERT INTO pipeline.edc_pipeline (code, label, kind) VALUES ('AUDIO', 'Voice memos', 'copy');"
        " INSERT INTO pipeline.edc_pipeline_ddfile (ddfile_name, edc_pipeline_id)"
        " SELECT 'Voice Memo', id FROM pipeline.edc_pipeline WHERE code = 'AUDIO'"
    )
    ids["audio"] = _insert_job(
        stack,
        "AUDIO",
        "subjecteventcrffile/1/101/Voice Memo/v1.m4a",
        status="Completed",
        created_at=now - 10 * 24 * hours,
        updated_at=now - 10 * 24 * hours,
        completed_at=now - 10 * 24 * hours,
    )
    yield Produced(stack, ids)


def run(produced: Produced, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), produced.stack.env)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listed(produced: Produced, capsys: pytest.CaptureFixture[str], *argv: str) -> list[int]:
    code, out, _ = run(produced, capsys, "jobs", "list", "--format", "json", *argv)
    assert code == 0
    return [job["id"] for job in json.loads(out)["jobs"]]


# -- jobs list -----------------------------------------------------------------------------------
def test_list_shows_every_job_newest_first_with_the_operator_columns(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(produced, capsys, "jobs", "list")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == [
        "id",
        "pipeline",
        "status",
        "error",
        "attempts",
        "created",
        "(UTC)",
        "updated",
        "(UTC)",
        "reprocess_of",
        "file",
        "size",
    ]
    assert len(lines) == len(produced.ids)
    created = {
        job["id"]: job["created_at"]
        for job in produced.stack.query("SELECT id, created_at FROM pipeline.edc_pipeline_file")
    }
    shown = [int(line.split()[0]) for line in lines]
    assert shown == sorted(created, key=lambda i: (created[i], i), reverse=True)
    single = next(line for line in lines if line.split()[0] == str(produced.ids["single"]))
    row = produced.row("single")
    assert single.split()[1:4] == ["IMAGING", "Completed", "-"]
    assert single.split()[-2:] == ["v1.dcm", str(row["source_bytes"])]
    mixed = next(line for line in lines if line.split()[0] == str(produced.ids["mixed"]))
    assert "ERRS1013" in mixed
    reprocess = next(line for line in lines if line.split()[0] == str(produced.ids["reprocess"]))
    assert f" {produced.ids['bad']} " in reprocess
    assert not any(participant in out for participant in PARTICIPANTS)


@pytest.mark.parametrize(
    ("spelling", "names"),
    [
        ("in progress", {"stuck", "live", "stuck_done"}),
        ("In-Progress", {"stuck", "live", "stuck_done"}),
        ("IN_PROGRESS", {"stuck", "live", "stuck_done"}),
        ("failed", {"bad", "never", "exhausted", "stuck_rerun"}),
        ("Started", {"reprocess"}),
        ("COMPLETED", {"single", "zip", "mixed", "audio"}),
    ],
)
def test_list_status_filter_accepts_any_spelling(
    produced: Produced, capsys: pytest.CaptureFixture[str], spelling: str, names: set[str]
) -> None:
    assert set(listed(produced, capsys, "--status", spelling)) == {produced.ids[n] for n in names}


def test_list_filters_by_since_pipeline_code_and_limit(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = produced.ids
    assert set(listed(produced, capsys, "--since", "1d")) == set(ids.values()) - {ids["audio"]}
    assert set(listed(produced, capsys, "--since", "1h")) == {
        ids[n] for n in ("single", "zip", "mixed", "bad", "never", "reprocess", "stuck_rerun")
    }
    assert listed(produced, capsys, "--pipeline", "AUDIO") == [ids["audio"]]
    assert listed(produced, capsys, "--code", "errs1013") == [ids["mixed"]]
    assert listed(produced, capsys, "--code", "ERRL1003", "--pipeline", "IMAGING", "--since", "1h") == [
        ids["stuck_rerun"],
        ids["never"],
    ]
    assert listed(produced, capsys, "--pipeline", "AUDIO", "--status", "Failed") == []
    assert len(listed(produced, capsys, "--limit", "3")) == 3
    code, _, err = run(produced, capsys, "jobs", "list", "--pipeline", "NOPE")
    assert code == 1 and err.strip() == "error: no pipeline 'NOPE' (registered: AUDIO, IMAGING)"


def test_stuck_lists_expired_untouched_jobs_with_the_threshold_and_the_command_that_finishes_them(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    stuck, done, rerun = (produced.ids[n] for n in ("stuck", "stuck_done", "stuck_rerun"))
    code, out, _ = run(produced, capsys, "jobs", "list", "--stuck")
    assert code == 0
    settings = produced.stack.settings()  # RETRY_BACKOFF_MAX_S=2, REPLICA_LAG_INTERVAL_S=1
    visibility = settings.visibility_timeout_s
    threshold = 2 + 2 * visibility
    assert f"more than {threshold} s (" in out
    assert (
        f"max(RETRY_BACKOFF_MAX_S=2, REPLICA_LAG_INTERVAL_S=1) + 2 * VISIBILITY_TIMEOUT_S={visibility})"
        in out
    )
    rows = [line for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    # Not the live lease, not the fresh Started reprocess: newest first.
    assert [int(line.split()[0]) for line in rows] == [stuck, done]
    assert out.splitlines()[-2:] == [
        f"  {REPROCESS.format(stuck)}",
        f"  job {done} was reprocessed by job {rerun}: python -m service jobs show {rerun}",
    ]
    code, out, _ = run(produced, capsys, "jobs", "list", "--stuck", "--format", "json")
    document = json.loads(out)
    assert document["stuck_older_than_s"] == threshold
    assert document["jobs"][0]["next_step"] == REPROCESS.format(stuck)
    assert listed(produced, capsys, "--stuck", "--older-than", "3h") == [done]
    assert listed(produced, capsys, "--stuck", "--older-than", "90m") == [stuck, done]
    assert listed(produced, capsys, "--stuck", "--older-than", "5h") == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--status", "done"],
        ["--since", "yesterday"],
        ["--limit", "0"],
        ["--code", "ERRX9999"],
        ["--older-than", "2h"],
        ["--stuck", "--older-than", "soon"],
        ["--format", "xml"],
    ],
)
def test_list_refuses_a_bad_argument_with_exit_2_and_one_error_line(
    produced: Produced, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["jobs", "list", *argv], produced.stack.env)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1


# -- jobs show -----------------------------------------------------------------------------------
def show(produced: Produced, capsys: pytest.CaptureFixture[str], name: str) -> tuple[str, dict[str, Any]]:
    code, text, _ = run(produced, capsys, "jobs", "show", str(produced.ids[name]))
    assert code == 0
    code, out, _ = run(produced, capsys, "jobs", "show", str(produced.ids[name]), "--format", "json")
    assert code == 0
    return text, json.loads(out)


def test_show_completed_file_has_quarantine_key_integrity_and_series(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    row, (series,) = produced.row("single"), produced.series("single")
    text, document = show(produced, capsys, "single")
    assert text.startswith(f"job {row['id']}: Completed\n")
    assert f"quarantine      s3://{row['destination_bucket']}/{row['destination_key']}" in text
    assert f"source_bytes {row['source_bytes']}  source_sha256 {row['source_sha256']}" in text
    assert f"quarantine_bytes {row['quarantine_bytes']}  quarantine_sha256 {row['quarantine_sha256']}" in text
    assert f"quarantine_s3_checksum {row['quarantine_s3_checksum']}" in text
    assert "subject_event_crf_file_id 1001, subjecteventcrf_id 101, revision_number 1" in text
    assert "ddcrf Imaging, ddfile CT Scan, event SCREENING" in text
    assert "pipeline        IMAGING (Imaging uploads), kind dicom" in text
    assert f"  {series['atri_uid']}  series {series['series_number']}  instances 1" in text
    assert "counts          members 1, instances_stamped 1, system_files 0" in text
    assert "in quarantine; nothing to do" in text
    for column in (
        "source_bytes",
        "source_sha256",
        "quarantine_bytes",
        "quarantine_sha256",
        "quarantine_s3_checksum",
        "destination_key",
        "source_key",
        "source_etag",
    ):
        assert document[column] == row[column]
    assert document["series"] == [
        {
            k: series[k]
            for k in ("atri_uid", "study_uid", "series_uid", "series_number", "number_of_instances")
        }
    ]
    assert document["errors"] == [] and document["stuck"] is False
    assert "participant_code" not in document


def test_show_zip_with_a_non_dicom_member_lists_the_error_with_its_meaning(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    text, document = show(produced, capsys, "mixed")
    assert "Completed (ERRS1013)" in text.splitlines()[0]
    assert "ERRS1013  process #2.txt:" in text
    assert "ERRS1013: Zip member is not DICOM; carried over unchanged" in text
    (error,) = document["errors"]
    assert (error["code"], error["member"], error["stage"]) == ("ERRS1013", "#2.txt", "process")
    assert error["meaning"] == "Zip member is not DICOM; carried over unchanged"
    assert document["next_steps"] == ["in quarantine with the problems listed under errors; nothing to run"]
    assert "README" not in text  # members by position, never by name


def test_show_seven_instance_zip_series(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    (series,) = produced.series("zip")
    text, document = show(produced, capsys, "zip")
    assert f"  {series['atri_uid']}  series 700  instances 7" in text
    assert document["series"][0]["number_of_instances"] == 7 and document["instances_stamped"] == 7


def test_show_failed_job_says_how_to_run_it_again(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    job = produced.ids["never"]
    text, document = show(produced, capsys, "never")
    assert text.startswith(f"job {job}: Failed (ERRL1003)")
    assert "EDC record not found in the read replica within the replica-lag window" in text
    assert "subject_event_crf_file_id -" in text and "quarantine      -" in text
    assert document["subject_event_crf_file_id"] is None
    assert document["next_steps"] == [
        f"not in quarantine; once the cause is fixed, run the file again: {REPROCESS.format(job)}"
    ]


def test_show_reprocess_relations_both_ways(produced: Produced, capsys: pytest.CaptureFixture[str]) -> None:
    bad, again = produced.ids["bad"], produced.ids["reprocess"]
    text, document = show(produced, capsys, "bad")
    assert f"reprocess       of job -; reprocessed by job {again}" in text
    assert "ERRS1012" in text and "File is not DICOM" in text
    assert document["reprocessed_by"] == again
    assert document["next_steps"] == [
        f"already reprocessed by job {again}: python -m service jobs show {again}"
    ]
    text, document = show(produced, capsys, "reprocess")
    assert f"reprocess       of job {bad}; reprocessed by job -" in text
    assert document["reprocess_of"] == bad and document["reprocessed_by"] is None


def test_show_stuck_live_and_exhausted_jobs_give_their_next_step(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    stuck, exhausted = produced.ids["stuck"], produced.ids["exhausted"]
    text, document = show(produced, capsys, "stuck")
    assert "lease           owner msg-gone:2 until" in text
    assert document["stuck"] is True and document["next_steps"][0].endswith(REPROCESS.format(stuck))
    _, document = show(produced, capsys, "live")
    assert document["stuck"] is False and document["next_steps"][0].startswith("being processed")
    _, document = show(produced, capsys, "exhausted")
    assert document["next_steps"] == [
        "deliveries ran out; its message is in the dead-letter queue: python -m service redrive",
        f"or run the file again as a new execution: {REPROCESS.format(exhausted)}",
    ]
    _, document = show(produced, capsys, "audio")
    assert (document["pipeline_kind"], document["pipeline_code"]) == ("copy", "AUDIO")


def test_show_unknown_job_is_exit_1_with_one_line(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(produced, capsys, "jobs", "show", "999999") == (1, "", "error: no job 999999\n")
    with pytest.raises(SystemExit) as info:
        main(["jobs", "show", "twelve"], produced.stack.env)
    assert info.value.code == 2


# -- inventory export ----------------------------------------------------------------------------
def test_inventory_csv_has_one_row_per_series_and_one_per_file_without_series(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(produced, capsys, "inventory", "export")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert not any("participant" in column for column in rows[0])
    by_file: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by_file.setdefault(int(r["pipeline_file_id"]), []).append(r)
    assert set(by_file) == set(produced.ids.values())
    assert list(by_file) == sorted(by_file)  # oldest first, by id
    (zip_row,) = by_file[produced.ids["zip"]]
    (series,) = produced.series("zip")
    job = produced.row("zip")
    assert (zip_row["atri_uid"], zip_row["number_of_instances"], zip_row["series_number"]) == (
        series["atri_uid"],
        "7",
        "700",
    )
    assert (zip_row["destination_key"], zip_row["quarantine_sha256"]) == (
        job["destination_key"],
        job["quarantine_sha256"],
    )
    assert (zip_row["pipeline_code"], zip_row["status"], zip_row["has_error"]) == (
        "IMAGING",
        "Completed",
        "false",
    )
    assert zip_row["created_at"] == job["created_at"].astimezone(UTC).isoformat()
    (failed,) = by_file[produced.ids["bad"]]
    assert (failed["error_code"], failed["atri_uid"], failed["series_uid"]) == ("ERRS1012", "", "")
    (again,) = by_file[produced.ids["reprocess"]]
    assert again["reprocess_of"] == str(produced.ids["bad"])
    assert PATIENT_NAME not in out


def test_inventory_json_document_and_filters(
    produced: Produced, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "inventory.json"
    code, out, _ = run(produced, capsys, "inventory", "export", "--format", "json", "--output", str(target))
    assert code == 0 and out == ""
    assert not (tmp_path / "inventory.json.part").exists()
    document = json.loads(target.read_text())
    assert set(document) == {"generated_at", "pipelines", "files"}
    assert document["pipelines"] == [
        {"code": "AUDIO", "label": "Voice memos", "kind": "copy", "ddfiles": ["Voice Memo"]},
        {
            "code": "IMAGING",
            "label": "Imaging uploads",
            "kind": "dicom",
            "ddfiles": ["CT Scan", "MRI Series"],
        },
    ]
    files = {f["pipeline_file_id"]: f for f in document["files"]}
    assert set(files) == set(produced.ids.values())
    single = files[produced.ids["single"]]
    assert single["series"][0]["atri_uid"] == produced.series("single")[0]["atri_uid"]
    assert single["source_sha256"] == produced.row("single")["source_sha256"]
    assert files[produced.ids["never"]]["series"] == []
    assert PATIENT_NAME not in target.read_text()
    for item in document["files"]:  # only the quarantine key, the labs' file name, may carry one
        assert not any(p in json.dumps({**item, "destination_key": None}) for p in PARTICIPANTS)

    code, out, _ = run(produced, capsys, "inventory", "export", "--format", "json", "--since", "1d")
    assert produced.ids["audio"] not in {f["pipeline_file_id"] for f in json.loads(out)["files"]}
    code, out, _ = run(produced, capsys, "inventory", "export", "--pipeline", "AUDIO", "--format", "json")
    only_audio = json.loads(out)
    assert [f["pipeline_file_id"] for f in only_audio["files"]] == [produced.ids["audio"]]
    assert [p["code"] for p in only_audio["pipelines"]] == ["AUDIO"]


def test_inventory_pages_through_files_in_any_page_size(produced: Produced) -> None:
    db = Database(produced.stack.pipeline_url, max_connections=1, read_only=True)
    try:
        queries = JobQueries(db)
        whole = list(queries.inventory(page_size=500))
        assert list(queries.inventory(page_size=2)) == whole
        assert list(queries.inventory(page_size=1)) == whole
        assert len(whole) == len(produced.ids)
    finally:
        db.close()


# -- every command ---------------------------------------------------------------------------------
def test_no_patient_name_or_participant_column_in_any_output(
    produced: Produced, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = [
        run(produced, capsys, "jobs", "list")[1],
        run(produced, capsys, "jobs", "list", "--format", "json")[1],
        run(produced, capsys, "inventory", "export", "--format", "json")[1],
        run(produced, capsys, "inventory", "export")[1],
    ]
    for job_id in produced.ids.values():
        outputs.append(run(produced, capsys, "jobs", "show", str(job_id))[1])
        outputs.append(run(produced, capsys, "jobs", "show", str(job_id), "--format", "json")[1])
    for text in outputs:
        assert PATIENT_NAME not in text and "participant" not in text
        assert produced.stack.pipeline_url not in text


@pytest.mark.parametrize(
    "argv", [["jobs", "list"], ["jobs", "show", "1"], ["inventory", "export", "--format", "json"]]
)
def test_unreachable_database_is_one_line_without_the_url(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    env = {"PIPELINE_DATABASE_URL": "postgresql://ops:s3cret@127.0.0.1:1/pipeline"}
    assert main(argv, env) == 1
    captured = capsys.readouterr()
    assert captured.err == "cannot reach the pipeline database (OperationalError)\n"
    assert "s3cret" not in captured.out + captured.err


def test_missing_database_setting_is_a_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jobs", "list"], {}) == 2
    assert "missing setting PIPELINE_DATABASE_URL" in capsys.readouterr().err


# -- pure parts ------------------------------------------------------------------------------------
def test_stuck_threshold_follows_the_settings_unless_given() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    defaults = Settings.from_env({})
    default = StuckRule.from_settings(defaults, now)
    assert default.grace == timedelta(seconds=max(900, 30) + 2 * defaults.visibility_timeout_s)
    slow = Settings.from_env({"REPLICA_LAG_INTERVAL_S": "1200", "VISIBILITY_TIMEOUT_S": "60"})
    assert StuckRule.from_settings(slow, now).grace == timedelta(seconds=1200 + 120)
    given = StuckRule.from_settings(slow, now, timedelta(hours=2))
    assert (given.grace, given.basis, given.untouched_before) == (
        timedelta(hours=2),
        "--older-than",
        now - timedelta(hours=2),
    )
    # A live lease is never stuck, however old the row; an expired or absent one is.
    old = now - timedelta(hours=3)
    assert not default.applies("In Progress", now + timedelta(seconds=1), old)
    assert default.applies("In Progress", now - timedelta(seconds=1), old)
    assert default.applies("Started", None, old)
    assert not default.applies("Started", None, now - timedelta(minutes=5))
    assert not default.applies("Failed", None, old)


@pytest.mark.parametrize(("text", "expected"), [("90m", timedelta(minutes=90)), ("2d", timedelta(days=2))])
def test_older_than_takes_a_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "2026-11-30", "soon", "-1h", "1.5h"])
def test_older_than_refuses_anything_but_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(
    produced: Produced, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`jobs list | head -1`: the reader goes away; no traceback, the shell's SIGPIPE status."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line
    with open(write_end, "w", buffering=1) as closed_pipe:
        monkeypatch.setattr("sys.stdout", closed_pipe)
        assert main(["jobs", "list"], produced.stack.env) == 141
        print("flushed at exit without a second failure", file=closed_pipe)
    assert "Traceback" not in capsys.readouterr().err
