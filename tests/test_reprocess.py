"""``reprocess``: new executions of a job's file, jobs resumed in place, objects without a job,
and the worker running what the command sends (moto's server, a real PostgreSQL)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pydicom
import pytest

from service.app import aws_client, utc_now
from service.cli import main
from service.db import Database
from service.events import MalformedMessageError, ObjectCreated, parse_message, reprocess_message
from service.local.samples import bundled_file, write_not_dicom, write_series_zip
from service.logs import configure_logging
from service.reprocess import Action, Reprocessor, plan
from service.s3io import ObjectStore
from service.sqs import Queue
from service.tracking import StoredJob, TrackingStore
from tests.stackfixtures import PIPELINE_CODE, TestStack

CT_KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"  # EDC row 1001
LATE_KEY = "subjecteventcrffile/1/101/CT Scan/late.dcm"  # no EDC row until the test adds it
BAD_KEY = "subjecteventcrffile/1/101/CT Scan/v2.dcm"  # EDC row 1003
MRI_ZIP_KEY = "subjecteventcrffile/2/102/MRI Series/v1.zip"  # EDC row 1002
TRACKING = (0x0012, 0x0071)


@pytest.fixture
def store(stack: TestStack) -> Iterator[TrackingStore]:
    db = Database(stack.pipeline_url, max_connections=1)
    yield TrackingStore(db)
    db.close()


def reprocess(stack: TestStack, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command as an operator would; return its exit code, stdout and stderr."""
    code = main(["reprocess", *args], stack.env)
    configure_logging("INFO", "json", stream=stack.log)  # main pointed the logs at stdout
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stop_notifications(stack: TestStack) -> None:
    stack.client("s3").put_bucket_notification_configuration(
        Bucket=stack.names.source_bucket, NotificationConfiguration={}
    )


def recorded_job(stack: TestStack, store: TrackingStore, key: str, body: bytes, **columns: Any) -> int:
    """A job for an uploaded object, recorded without an S3 event, its row then set by SQL."""
    stop_notifications(stack)
    stack.upload(key, body)
    etag = stack.client("s3").head_object(Bucket=stack.names.source_bucket, Key=key)["ETag"].strip('"')
    pipeline = store.pipeline_by_code(PIPELINE_CODE)
    assert pipeline is not None
    now = utc_now()
    source = ObjectCreated(stack.names.source_bucket, key, None, etag, len(body), now)
    job = store.open_job(pipeline, source, key.rsplit("/", 1)[-1], now)
    if columns:
        assignments = ", ".join(f"{name} = %s" for name in columns)
        stack.query(
            f"UPDATE pipeline.edc_pipeline_file SET {assignments} WHERE id = %s", (*columns.values(), job.id)
        )
    return job.id


def atri_prefixes(stack: TestStack) -> dict[str, str]:
    """Quarantine key -> the ATRIUID its DICOM file carries."""
    found = {}
    for key in stack.quarantine_keys():
        data = stack.read(stack.names.destination_bucket, key)
        found[key] = pydicom.dcmread(io.BytesIO(data))[TRACKING].value
    return found


def test_a_completed_job_reprocessed_is_a_new_execution_with_its_own_quarantine_object(
    stack: TestStack, capsys: pytest.CaptureFixture[str]
) -> None:
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (first,) = stack.wait_settled(1)
    assert first["status"] == "Completed"

    code, out, _ = reprocess(stack, capsys, "--file-id", str(first["id"]))
    assert code == 0
    (new,) = [j for j in stack.jobs() if j["id"] != first["id"]]
    assert f"job {first['id']}: new-execution -> job {new['id']} [{CT_KEY}]" in out
    assert "queued: 1 new execution(s), 0 resumed" in out
    assert (new["status"], new["reprocess_of"], new["attempts"]) == ("Started", first["id"], 0)
    for column in ("edc_pipeline_id", "source_bucket", "source_key", "source_version", "source_size"):
        assert new[column] == first[column], column
    assert (new["source_etag"], new["file_name"]) == (first["source_etag"], first["file_name"])

    with stack.worker():
        stack.wait_settled(2)
        stack.wait_for(lambda: stack.queue_depth() == 0, what="message acknowledged")
    new = stack.jobs()[1]
    assert (new["status"], new["has_error"]) == ("Completed", False)
    assert new["destination_key"] != first["destination_key"]
    uids = atri_prefixes(stack)
    assert sorted(uids) == sorted([first["destination_key"], new["destination_key"]])
    assert uids[first["destination_key"]].startswith(f"{first['id']}.")
    assert uids[new["destination_key"]].startswith(f"{new['id']}.")
    assert sorted(s["edc_pipeline_file_id"] for s in stack.series()) == [first["id"], new["id"]]

    # The same request again: no third row, no message.
    code, out, _ = reprocess(stack, capsys, "--file-id", str(first["id"]))
    assert code == 0
    assert f"job {first['id']} was already reprocessed as job {new['id']} (Completed)" in out
    assert len(stack.jobs()) == 2 and stack.queue_depth() == 0


def test_failed_jobs_selected_by_code_and_since_run_again_after_the_cause_is_fixed(
    stack: TestStack, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    with stack.worker():  # REPLICA_LAG_MAX_S=4: the missing EDC record fails within seconds
        stack.upload(LATE_KEY, bundled_file("CT_small.dcm"))
        stack.upload(BAD_KEY, write_not_dicom(tmp_path / "bad.dcm"))
        stack.wait_settled(2, timeout=40)
        stack.wait_for(lambda: stack.queue_depth() == 0, what="queue drained")
    by_code = {j["error_code"]: j for j in stack.jobs()}
    assert sorted(by_code) == ["ERRL1003", "ERRS1012"]
    late = by_code["ERRL1003"]
    stack.query("INSERT INTO edc.subjecteventcrffile VALUES (3001, 101, 1, 'late', 5)", url=stack.edc_url)

    code, out, _ = reprocess(
        stack, capsys, "--status", "Failed", "--code", "ERRL1003", "--since", "1h", "--dry-run"
    )
    assert code == 0
    assert f"job {late['id']}: new-execution (dry run)" in out
    assert "ERRS1012" not in out and f"job {by_code['ERRS1012']['id']}:" not in out
    assert "dry run: nothing changed" in out
    assert len(stack.jobs()) == 2 and stack.queue_depth() == 0
    code, out, _ = reprocess(
        stack, capsys, "--status", "Failed", "--code", "ERRL1003", "--since", "2000-01-01"
    )
    assert code == 0 and "queued: 1 new execution(s)" in out
    # The job runs in its own pipeline, even one disabled since.
    stack.query("UPDATE pipeline.edc_pipeline SET enabled = false")
    with stack.worker():
        stack.wait_settled(3)
    new = stack.jobs()[-1]
    assert (new["reprocess_of"], new["status"], new["subject_event_crf_file_id"]) == (
        late["id"],
        "Completed",
        3001,
    )
    # Selected once only: the failed job has its reprocess now.
    code, out, _ = reprocess(stack, capsys, "--status", "Failed", "--code", "ERRL1003")
    assert code == 0 and "queued: 0 new execution(s)" in out and len(stack.jobs()) == 3
    code, out, _ = reprocess(stack, capsys, "--status", "Failed", "--since", "1h", "--dry-run")
    assert f"job {by_code['ERRS1012']['id']}: new-execution (dry run)" in out


def test_a_job_whose_deliveries_ran_out_is_resumed_in_place(
    stack: TestStack, store: TrackingStore, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = recorded_job(
        stack,
        store,
        CT_KEY,
        bundled_file("CT_small.dcm").read_bytes(),
        status="Failed",
        has_error=True,
        error_code="ERRL8003",
        attempts=5,
    )
    code, out, _ = reprocess(stack, capsys, "--file-id", str(job_id))
    assert code == 0 and f"job {job_id}: resume -> job {job_id}: Failed ERRL8003" in out
    assert "0 new execution(s), 1 resumed" in out
    with stack.worker():
        stack.wait_for(lambda: stack.jobs()[0]["status"] == "Completed", what="resumed job completed")
    (job,) = stack.jobs()
    assert (job["id"], job["error_code"], job["attempts"], job["reprocess_of"]) == (job_id, None, 6, None)
    assert len(stack.quarantine_keys()) == 1


def test_a_stuck_job_is_resumed_and_a_running_one_skipped(
    stack: TestStack, store: TrackingStore, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    now = utc_now()
    stuck = recorded_job(
        stack,
        store,
        CT_KEY,
        bundled_file("CT_small.dcm").read_bytes(),
        status="In Progress",
        attempts=1,
        lease_owner="dead-worker:1",
        lease_until=now - timedelta(minutes=5),
    )
    running = recorded_job(
        stack,
        store,
        MRI_ZIP_KEY,
        write_series_zip(tmp_path / "s.zip").read_bytes(),
        status="In Progress",
        attempts=1,
        lease_owner="live-worker:1",
        lease_until=now + timedelta(minutes=10),
    )
    depth = stack.queue_depth()
    code, out, _ = reprocess(stack, capsys, "--file-id", str(running))
    assert code == 0 and f"job {running}: skip: running (In Progress, lease until" in out
    assert stack.queue_depth() == depth
    code, out, _ = reprocess(stack, capsys, "--file-id", str(stuck))
    assert code == 0 and f"job {stuck}: resume -> job {stuck}: In Progress with no live lease" in out
    with stack.worker():
        stack.wait_for(lambda: stack.jobs()[0]["status"] == "Completed", what="stuck job completed")
    jobs = stack.jobs()
    assert [j["id"] for j in jobs] == [stuck, running] and jobs[1]["status"] == "In Progress"
    assert len(stack.quarantine_keys()) == 1


def test_prefix_reprocesses_jobs_gives_first_jobs_and_shows_progress(
    stack: TestStack, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (first,) = stack.wait_settled(1)
    stop_notifications(stack)  # uploaded before the notification existed, say
    stack.upload(MRI_ZIP_KEY, write_series_zip(tmp_path / "s.zip"))
    stack.upload("subjecteventcrffile/1/101/Consent Form/v1.pdf", b"%PDF-1.4")  # no pipeline
    stack.upload("elsewhere/readme.txt", b"not under the prefix")
    settings = stack.settings()
    db = Database(stack.pipeline_url, max_connections=1)
    out, progress = io.StringIO(), io.StringIO()
    try:
        assert settings.pipeline_queue_url
        run = Reprocessor(
            TrackingStore(db), Queue(aws_client(settings, "sqs"), settings.pipeline_queue_url), utc_now, out
        )
        summary = run.run_prefix(
            ObjectStore(aws_client(settings, "s3")),
            stack.names.source_bucket,
            "subjecteventcrffile/",
            progress,
            every=1,
        )
    finally:
        db.close()
    assert (summary.listed, summary.new_executions, summary.first_jobs, summary.skipped) == (3, 1, 1, 1)
    lines = progress.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1] == "reprocess done: listed 3, queued 2, skipped 1, failed sends 0"
    text = out.getvalue()
    assert f"job {first['id']}: new-execution -> job" in text
    assert f"no job: first-job: no job yet [{MRI_ZIP_KEY}]" in text
    assert "no job: skip: no enabled pipeline handles its ddfile" in text
    with stack.worker():
        jobs = stack.wait_settled(3)
    assert [(j["source_key"], j["reprocess_of"], j["status"]) for j in jobs] == [
        (CT_KEY, None, "Completed"),
        (CT_KEY, first["id"], "Completed"),
        (MRI_ZIP_KEY, None, "Completed"),
    ]
    etag = stack.client("s3").head_object(Bucket=stack.names.source_bucket, Key=MRI_ZIP_KEY)["ETag"]
    assert jobs[2]["source_etag"] == etag.strip('"')  # the exact version listed

    # Through the CLI, again: the CT job is reprocessed already, the zip's first job now is.
    code, stdout, stderr = reprocess(
        stack, capsys, "--prefix", "subjecteventcrffile/", "--pipeline", PIPELINE_CODE
    )
    assert code == 0
    assert (
        f"job {first['id']}: skip: job {first['id']} was already reprocessed as job {jobs[1]['id']}" in stdout
    )
    assert f"job {jobs[2]['id']}: new-execution -> job" in stdout
    assert "reprocess done: listed 3, queued 1, skipped 2, failed sends 0" in stderr


def test_dry_run_changes_nothing(
    stack: TestStack, store: TrackingStore, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (first,) = stack.wait_settled(1)
        stack.wait_for(lambda: stack.queue_depth() == 0, what="queue drained")
    stop_notifications(stack)
    stack.upload(MRI_ZIP_KEY, write_series_zip(tmp_path / "s.zip"))
    exhausted = recorded_job(stack, store, BAD_KEY, b"x", status="Failed", error_code="ERRL8003")
    before = (stack.jobs(), stack.queue_depth())
    code, out, _ = reprocess(stack, capsys, "--file-id", str(first["id"]), "--dry-run")
    assert code == 0 and f"job {first['id']}: new-execution (dry run)" in out
    code, out, _ = reprocess(stack, capsys, "--file-id", str(exhausted), "--dry-run")
    assert code == 0 and f"job {exhausted}: resume -> job {exhausted}: Failed ERRL8003" in out
    code, out, _ = reprocess(stack, capsys, "--prefix", "subjecteventcrffile/", "--dry-run")
    assert code == 0 and f"no job: first-job: no job yet (dry run) [{MRI_ZIP_KEY}]" in out
    assert "would queue: 1 new execution(s), 1 resumed, 0 re-sent, 1 first job(s)" in out
    assert (stack.jobs(), stack.queue_depth()) == before


def test_a_reprocess_message_for_a_mismatched_job_is_errs1003_an_unknown_one_errs1001_both_acknowledged(
    stack: TestStack,
) -> None:
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
        now = utc_now()
        unknown = ObjectCreated(stack.names.source_bucket, CT_KEY, None, "e" * 32, 1, now, job_id=999)
        mismatched = ObjectCreated(
            stack.names.source_bucket, BAD_KEY, None, "e" * 32, 1, now, job_id=job["id"]
        )
        for source in (unknown, mismatched):
            stack.send(reprocess_message(source))
        stack.wait_for(lambda: len(stack.errors()) == 2, what="two error rows")
        stack.wait_for(lambda: stack.queue_depth() == 0, what="both acknowledged")
    assert len(stack.jobs()) == 1 and len(stack.quarantine_keys()) == 1
    errors = stack.errors()
    # The design's code for "does not match the input's"; a job that is not there names nothing.
    assert [(e["error_code"], e["edc_pipeline_file_id"]) for e in errors] == [
        ("ERRS1001", None),
        ("ERRS1003", None),
    ]
    assert errors[0]["message"] == "reprocess message names job 999, which does not exist"
    assert errors[1]["message"] == (
        f"reprocess message names job {job['id']}, which is another object version's"
    )
    assert '"job.unknown_execution"' in stack.log.getvalue()
    assert stack.jobs()[0]["status"] == "Completed"  # the named job is left as it was


def test_a_failed_send_is_reported_and_the_same_command_sends_it_again(
    stack: TestStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (first,) = stack.wait_settled(1)
        stack.wait_for(lambda: stack.queue_depth() == 0, what="queue drained")
    with monkeypatch.context() as patch:
        patch.setattr(Queue, "send_batch", lambda _self, bodies: list(range(len(bodies))))
        code, out, _ = reprocess(stack, capsys, "--file-id", str(first["id"]))
    assert code == 1
    (new,) = [j for j in stack.jobs() if j["id"] != first["id"]]
    assert f"-> job {new['id']}: SEND FAILED (job {new['id']} stays Started with no lease" in out
    assert "failed sends 1" in out and stack.queue_depth() == 0
    code, out, _ = reprocess(stack, capsys, "--file-id", str(first["id"]))
    assert code == 0 and f"job {first['id']}: resend -> job {new['id']}" in out
    assert len(stack.jobs()) == 2
    with stack.worker():
        stack.wait_settled(2)
    assert stack.jobs()[1]["status"] == "Completed" and len(stack.quarantine_keys()) == 2


def test_unknown_file_id_and_missing_settings(stack: TestStack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = reprocess(stack, capsys, "--file-id", "4242")
    assert code == 1 and "job 4242: unknown" in out
    env = {"PIPELINE_DATABASE_URL": stack.pipeline_url}
    assert main(["reprocess", "--file-id", "1"], env) == 2
    assert "missing setting PIPELINE_QUEUE_URL" in capsys.readouterr().err
    assert main(["reprocess", "--prefix", "x/"], {**stack.env, "SOURCE_BUCKET": ""}) == 2
    assert "missing setting SOURCE_BUCKET" in capsys.readouterr().err
    assert main(["reprocess", "--file-id", "1", "--code", "ERRL1003"], stack.env) == 2
    assert main(["reprocess", "--file-id", "1", "--pipeline", "NOPE"], stack.env) == 2


# -- pure parts ----------------------------------------------------------------------------------
T0 = datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)


def stored(**fields: Any) -> StoredJob:
    base: dict[str, Any] = {
        "id": 7,
        "pipeline_id": 1,
        "pipeline_code": "IMAGING",
        "status": "Completed",
        "error_code": None,
        "attempts": 1,
        "lease_until": None,
        "created_at": T0,
        "reprocess_of": None,
        "bucket": "src",
        "key": CT_KEY,
        "version": "0" * 32,
        "version_id": None,
        "etag": "0" * 32,
        "size": 10,
    }
    return StoredJob(**{**base, **fields})


def test_plan_chooses_the_action_from_the_jobs_state() -> None:
    assert plan(stored(), None, T0).action is Action.NEW_EXECUTION
    assert plan(stored(status="Failed", error_code="ERRS1012"), None, T0).action is Action.NEW_EXECUTION
    exhausted = plan(stored(status="Failed", error_code="ERRL8003"), None, T0)
    assert (exhausted.action, exhausted.target) == (
        Action.RESUME,
        stored(status="Failed", error_code="ERRL8003"),
    )
    assert plan(stored(status="Started", attempts=0), None, T0).action is Action.RESUME
    assert (
        plan(stored(status="In Progress", lease_until=T0 - timedelta(seconds=1)), None, T0).action
        is Action.RESUME
    )
    assert (
        plan(stored(status="In Progress", lease_until=T0 + timedelta(seconds=1)), None, T0).action
        is Action.SKIP
    )
    done = plan(stored(), stored(id=9, reprocess_of=7, status="Completed"), T0)
    assert done.action is Action.SKIP
    assert done.reason.startswith("job 7 was already reprocessed as job 9 (Completed)")
    unsent = stored(id=9, reprocess_of=7, status="Started", attempts=0)
    assert plan(stored(), unsent, T0).action is Action.RESEND
    assert plan(stored(), stored(id=9, status="Started", attempts=1), T0).action is Action.SKIP


def test_rows_from_before_0004_tell_version_ids_from_etags() -> None:
    assert stored(version="a" * 32, etag=None).exact_version == (None, "a" * 32)
    assert stored(version="a" * 32 + "-12", etag=None).exact_version == (None, "a" * 32 + "-12")
    assert stored(version="3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY", etag=None).exact_version == (
        "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY",
        None,
    )
    assert stored(version="v-1", version_id="v-1", etag="b" * 32).exact_version == ("v-1", "b" * 32)


def test_the_reprocess_message_round_trips_and_anything_malformed_in_it_is_refused() -> None:
    source = ObjectCreated(
        "src", "subjecteventcrffile/1/101/CT Scan/v1+x.dcm", "v-1", "abc", 10, T0, job_id=12
    )
    body = reprocess_message(source)
    assert body["edc_image_pipeline"] == "reprocess" and body["requested_at"] == T0.isoformat()
    (parsed,) = parse_message(json.dumps(body)).objects
    assert parsed == source  # the key is not URL-encoded: "+" stays a plus sign
    assert ObjectCreated("b", "k", None, None, None, T0).job_id is None
    for change in (
        {"pipeline_file_id": "12"},
        {"pipeline_file_id": True},
        {"pipeline_file_id": 0},
        {"edc_image_pipeline": "redrive"},
        {"bucket": ""},
        {"key": None},
        {"size": -1},
        {"size": "10"},
        {"etag": 5},
        {"requested_at": "yesterday"},
    ):
        with pytest.raises(MalformedMessageError):
            parse_message(json.dumps({**body, **change}))
