"""Issue 10 on the real stack (moto's server + the throwaway PostgreSQL): records that are true,
refusals that are permanent and coded, and events that are not uploads left alone."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from service.cli import main
from service.config import Settings
from service.errors import ConfigError, PermanentError, RetryableError, Stage
from service.events import ObjectCreated
from service.fingerprint import Fingerprint
from service.local.samples import bundled_file
from service.quarantine import check_fits_s3, quarantine_metadata
from service.s3io import ObjectStore
from service.workspace import DiskSpace
from tests.stackfixtures import TestStack, s3_event

T0 = datetime(2026, 12, 1, tzinfo=UTC)
CT_KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"  # EDC row 1001
OTHER_KEY = "subjecteventcrffile/2/102/CT Scan/v1.zip"  # EDC row 1004
SNS_LIMIT = 256 * 1024


# -- 9: the integrity record ---------------------------------------------------------------------
def test_integrity_record_is_on_the_job_row_and_in_the_object_metadata(stack: TestStack) -> None:
    original = bundled_file("CT_small.dcm").read_bytes()
    with stack.worker():
        stack.upload(CT_KEY, original)
        (job,) = stack.wait_settled(1)
    stored = stack.read(stack.names.destination_bucket, job["destination_key"])
    source_sha, stored_sha = hashlib.sha256(original).hexdigest(), hashlib.sha256(stored).hexdigest()
    assert (job["source_bytes"], job["source_sha256"]) == (len(original), source_sha)
    assert (job["quarantine_bytes"], job["quarantine_sha256"]) == (len(stored), stored_sha)
    # S3's own checksum of a single PUT is the object's SHA-256, base64.
    assert job["quarantine_s3_checksum"] == base64.b64encode(hashlib.sha256(stored).digest()).decode()
    assert (job["members"], job["instances_stamped"], job["system_files"]) == (1, 1, 0)
    metadata = stack.client("s3").head_object(
        Bucket=stack.names.destination_bucket, Key=job["destination_key"]
    )["Metadata"]
    assert metadata["source-sha256"] == source_sha and metadata["source-bytes"] == str(len(original))
    assert metadata["sha256"] == stored_sha and metadata["bytes"] == str(len(stored))


# -- 6: smaller ones ------------------------------------------------------------------------------
def test_a_notification_too_large_for_sns_is_shortened_and_points_to_the_error_log(
    stack: TestStack,
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("IM0001.dcm", bundled_file("CT_small.dcm").read_bytes())
        for n in range(2500):
            archive.writestr(f"notes/{n:05d}.txt", b"scanner notes")
    with stack.worker():
        stack.upload(OTHER_KEY, buffer.getvalue())
        (job,) = stack.wait_settled(1, timeout=90)
    assert (job["status"], job["error_code"]) == ("Completed", "ERRS1013")
    (log_key,) = stack.keys(stack.names.error_log_bucket)
    full_log = stack.read(stack.names.error_log_bucket, log_key)
    assert len(full_log) > SNS_LIMIT  # the whole list is in the log...
    (note,) = stack.notifications()
    body = note["message"].encode()
    assert len(body) <= SNS_LIMIT  # ...and the notification still arrived, shortened
    assert "more line(s) not shown" in note["message"] and log_key in note["message"]


@pytest.mark.parametrize("tag", ["0028,0010", "0008,1115", "0010,0010", "0020,0011"])
def test_a_tracking_tag_the_processor_cannot_use_stops_start_up(
    tag: str, stack: TestStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Rows (US), a sequence (SQ), a person name, an integer string: refused before any job.
    with pytest.raises(ConfigError, match="DICOM_TRACKING_TAG"):
        Settings.from_env({"DICOM_TRACKING_TAG": tag})
    assert main(["worker"], {**stack.env, "DICOM_TRACKING_TAG": tag}) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "DICOM_TRACKING_TAG" in line


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,  # nested past the recursion limit
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": ["x"]}}}]}),
        '{"Records": [{"eventName": "ObjectCreated:Put", "eventTime": 1e400}]}',
        json.dumps(s3_event("b", "subjecteventcrffile/1/101/CT+Scan/v1%00.dcm", "abc")),
        json.dumps(s3_event("b", "subjecteventcrffile/1/101/CT+Scan/v1.dcm", "abc")).replace(
            '"eTag"', '"versionId": {"x": 1}, "eTag"'
        ),
    ],
    ids=["deep", "odd-shape", "infinite-time", "nul-in-key", "version-not-a-string"],
)
def test_any_failure_to_parse_a_body_is_a_recorded_malformed_message(stack: TestStack, body: str) -> None:
    with stack.worker():
        stack.send(body)
        stack.wait_for(lambda: len(stack.errors()) >= 1, what="error row", timeout=20)
    (error,) = stack.errors()
    assert error["error_code"] == "ERRS1001"
    assert '"worker.process_crashed"' not in stack.log.getvalue()


BAD_SIZES = ["1e400", "NaN", "-1", "7.5", "true", '"7"']  # infinity, NaN, negative, fraction, bool, text


def test_a_size_that_is_not_a_finite_non_negative_integer_is_a_malformed_message(stack: TestStack) -> None:
    stack.client("s3").put_bucket_notification_configuration(
        Bucket=stack.names.source_bucket, NotificationConfiguration={}
    )
    stack.upload(CT_KEY, bundled_file("CT_small.dcm"))  # the object exists: only the size is wrong
    etag = stack.client("s3").head_object(Bucket=stack.names.source_bucket, Key=CT_KEY)["ETag"].strip('"')
    body = json.dumps(
        s3_event(stack.names.source_bucket, "subjecteventcrffile/1/101/CT+Scan/v1.dcm", etag, 7)
    )
    with stack.worker():
        for size in BAD_SIZES:
            stack.send(body.replace('"size": 7', f'"size": {size}'))
        stack.wait_for(lambda: len(stack.errors()) >= len(BAD_SIZES), what="error rows", timeout=20)
        stack.wait_for(
            lambda: stack.log.getvalue().count('"worker.malformed_message"') >= len(BAD_SIZES),
            what="malformed log lines",
        )
    errors = stack.errors()
    assert [e["error_code"] for e in errors] == ["ERRS1001"] * len(BAD_SIZES)
    assert all("size that is not a non-negative integer" in e["message"] for e in errors)
    assert stack.jobs() == []  # nothing was downloaded or stamped
    assert '"worker.process_crashed"' not in stack.log.getvalue()


def test_null_edc_fields_never_become_none_in_names(stack: TestStack, tmp_path: Path) -> None:
    lookup = (Path(__file__).resolve().parents[1] / "service/sql/edc_lookup.sql").read_text()
    sql = tmp_path / "lookup.sql"
    sql.write_text(lookup.replace("subject.participant_code", "NULL::text"))
    with stack.worker(EDC_LOOKUP_SQL=str(sql)):
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["error_code"], job["participant_code"]) == ("Failed", "ERRL4001", None)
    assert stack.quarantine_keys() == []
    (log_key,) = stack.keys(stack.names.error_log_bucket)
    assert "_NA_" in log_key and "None" not in log_key
    text = stack.read(stack.names.error_log_bucket, log_key).decode()
    assert "ERRL4001" in text and "participant" in text and "None" not in text


def test_events_for_other_buckets_and_prefixes_are_acknowledged_with_one_line(stack: TestStack) -> None:
    error_log_key = "image_pipelines/error_logs/IMAGING/x_error_log.txt"
    with stack.worker():
        stack.send(s3_event(stack.names.error_log_bucket, error_log_key, "abc"))  # a notification loop
        stack.send(s3_event(stack.names.source_bucket, error_log_key, "abc"))  # right bucket, not an upload
        stack.send(s3_event("someone-elses-bucket", "subjecteventcrffile/1/101/CT+Scan/v1.dcm", "abc"))
        stack.wait_for(lambda: stack.queue_depth() == 0, what="all acknowledged")
    assert stack.jobs() == [] and stack.errors() == []
    assert stack.keys(stack.names.error_log_bucket) == [] and stack.notifications() == []
    assert stack.log.getvalue().count('"job.not_a_source_object"') == 3


def test_a_file_that_cannot_fit_work_dir_fails_before_the_download(
    stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 20 GB upload on a task whose ephemeral storage is 21 GB: two copies never fit.
    monkeypatch.setattr("service.pipeline.disk_space", lambda _path: DiskSpace(21 * 1024**3, 20 * 1024**3))
    stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
    key = "subjecteventcrffile/1/101/CT+Scan/v1.dcm"
    event = s3_event(stack.names.source_bucket, key, "whatever", size=20 * 1024**3)
    # Off: a large single file stamped inside S3 never needs WORK_DIR (test_stamp_in_s3).
    with stack.worker(S3_COPY_MIN_MB="0"):
        stack.send(event)
        job = next(j for j in stack.wait_settled(1) if j["status"] == "Failed")
    assert job["error_code"] == "ERRL2004"
    assert '"retry.scheduled"' not in stack.log.getvalue()


def test_a_file_that_cannot_fit_now_waits_without_downloading(
    short_stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = short_stack
    downloads: list[object] = []
    monkeypatch.setattr("service.pipeline.disk_space", lambda _path: DiskSpace(100 * 1024**3, 1024))
    from service.s3io import ObjectStore

    original = ObjectStore.download
    monkeypatch.setattr(ObjectStore, "download", lambda *a: downloads.append(a) or original(*a))
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        stack.wait_settled(1, timeout=40)
    assert [e["error_code"] for e in stack.errors()] == ["ERRL2005", "ERRL8003"]
    assert downloads == []


def test_edc_names_too_long_for_an_s3_key_fail_permanently(stack: TestStack) -> None:
    stack.query("UPDATE edc.ddcrf SET name = repeat('Imaging Form ', 90)", url=stack.edc_url)
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
        stack.wait_for(lambda: stack.queue_depth() == 0, what="acknowledged")
    assert (job["status"], job["error_code"], job["attempts"]) == ("Failed", "ERRL4005", 1)
    assert stack.quarantine_keys() == []
    (log_key,) = stack.keys(stack.names.error_log_bucket)  # the error log still gets written
    assert len(log_key.encode()) <= 1024 and f"job_{job['id']}_" in log_key


def test_a_retry_writes_to_the_bucket_reserved_with_the_key(
    stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = stack.client("s3")
    first_bucket = f"{stack.names.destination_bucket}-first"
    s3.create_bucket(Bucket=first_bucket)

    def unavailable(*_args: object, **_kwargs: object) -> None:
        # As S3 fails an upload that may or may not have landed (a timeout after the last byte).
        raise RetryableError("ERRL4002", "S3 call failed (ReadTimeoutError, transient)", Stage.QUARANTINE)

    with monkeypatch.context() as patched:
        patched.setattr(ObjectStore, "upload_once", unavailable)
        with stack.worker(DESTINATION_BUCKET=first_bucket):
            stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
            stack.wait_for(lambda: '"job.retry_later"' in stack.log.getvalue(), what="upload failed")
    assert stack.jobs()[0]["destination_bucket"] == first_bucket
    # The operator changes DESTINATION_BUCKET: the job still goes where its key was reserved.
    with stack.worker():
        (job,) = stack.wait_settled(1, timeout=40)
    assert (job["status"], job["destination_bucket"]) == ("Completed", first_bucket)
    assert stack.keys(first_bucket) == [job["destination_key"]]
    assert stack.quarantine_keys() == []


def test_metadata_past_s3s_2_kb_is_refused_with_its_code() -> None:
    source = ObjectCreated(
        "uploads", "subjecteventcrffile/1/101/CT Scan/" + "é" * 400 + ".dcm", None, "e", 1, T0
    )
    fingerprint = Fingerprint(1, "0" * 64)
    metadata = quarantine_metadata(7, source, fingerprint, fingerprint)  # the key, quoted: 2.4 KB
    with pytest.raises(PermanentError) as refused:
        check_fits_s3("quarantine/short.dcm", metadata)
    assert refused.value.code == "ERRL4005" and "metadata" in refused.value.message
    short = dataclasses.replace(source, key="subjecteventcrffile/1/101/CT Scan/v1.dcm")
    check_fits_s3("quarantine/short.dcm", quarantine_metadata(7, short, fingerprint, fingerprint))


def test_a_series_number_too_large_for_the_database_is_recorded_as_unknown(
    stack: TestStack, tmp_path: Path
) -> None:
    dataset = pydicom.dcmread(bundled_file("CT_small.dcm"))
    dataset.SeriesNumber = 999999999999  # a valid IS (12 digits), past PostgreSQL's integer
    path = tmp_path / "big-number.dcm"
    dataset.save_as(path)
    with stack.worker():
        stack.upload(CT_KEY, path)
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["has_error"], job["attempts"]) == ("Completed", False, 1)
    (series,) = stack.series()
    assert series["series_number"] is None


@pytest.mark.parametrize("with_record", [True, False], ids=["with-record", "older-release"])
def test_an_object_an_earlier_attempt_wrote_is_recorded_as_it_is(stack: TestStack, with_record: bool) -> None:
    # An earlier attempt of job 1 uploaded, then died before completing the job.
    frozen = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    key = "quarantine/Imaging_CTScan/Imaging_CTScan_P-001_SCREENING_101_1_1_20260501_120000.dcm"
    metadata = {"pipeline-file-id": "1"}
    if with_record:
        metadata |= {"sha256": "ab" * 32, "bytes": "5"}
    stack.client("s3").put_object(
        Bucket=stack.names.destination_bucket, Key=key, Body=b"first", Metadata=metadata
    )
    with stack.worker(clock=lambda: frozen):
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["destination_key"]) == ("Completed", key)
    assert stack.read(stack.names.destination_bucket, key) == b"first"  # never overwritten
    expected = ("ab" * 32, 5) if with_record else (None, None)
    assert (job["quarantine_sha256"], job["quarantine_bytes"], job["quarantine_s3_checksum"]) == (
        *expected,
        None,
    )
    assert '"quarantine.already_written"' in stack.log.getvalue()


def test_a_refusal_after_an_earlier_upload_completes_the_job_with_its_code(
    stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attempt 1 wrote the quarantine object and could not record it; before attempt 2 the site
    deleted the upload (ERRL2002). The file is in quarantine, so the job must not say Failed."""
    import psycopg2

    from service.tracking import TrackingStore

    def unrecorded(*_args: object) -> None:
        raise psycopg2.errors.QueryCanceled("statement timeout")  # refused, not unreachable

    with monkeypatch.context() as patched:
        patched.setattr(TrackingStore, "complete_job", unrecorded)
        with stack.worker():
            stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
            stack.wait_for(lambda: '"job.retry_later"' in stack.log.getvalue(), what="recording failed")
    (written,) = stack.quarantine_keys()
    stack.client("s3").delete_object(Bucket=stack.names.source_bucket, Key=CT_KEY)
    with stack.worker():
        (job,) = stack.wait_settled(1, timeout=40)
    assert (job["status"], job["has_error"], job["error_code"]) == ("Completed", True, "ERRL2002")
    assert job["destination_key"] == written and stack.quarantine_keys() == [written]
    head = stack.client("s3").head_object(Bucket=stack.names.destination_bucket, Key=written)["Metadata"]
    assert (job["quarantine_sha256"], job["source_sha256"]) == (head["sha256"], head["source-sha256"])
    assert [e["error_code"] for e in stack.errors()] == ["ERRL2002"]  # a retried fault is not recorded
    assert "ERRL2002" in stack.notifications()[-1]["subject"]
