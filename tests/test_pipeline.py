"""The worker end to end: moto's HTTP server, a real PostgreSQL, the worker in a thread."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from service.errors import ConfigError
from service.local.samples import bundled_file, series_dir, write_mixed_zip, write_not_dicom, write_series_zip
from tests.stackfixtures import TestStack, s3_event

CT_KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"  # EDC row 1001
MRI_ZIP_KEY = "subjecteventcrffile/2/102/MRI Series/v1.zip"  # EDC row 1002
BAD_KEY = "subjecteventcrffile/1/101/CT Scan/v2.dcm"  # EDC row 1003
OTHER_KEY = "subjecteventcrffile/2/102/CT Scan/v1.zip"  # EDC row 1004
TRACKING = (0x0012, 0x0071)


def pixel_bytes(data: bytes) -> bytes:
    return bytes(pydicom.dcmread(io.BytesIO(data)).PixelData)


def test_single_file_reaches_quarantine_stamped(stack: TestStack) -> None:
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["has_error"], job["error_code"]) == ("Completed", False, None)
    assert (job["participant_code"], job["event_code"], job["revision_number"]) == ("P-001", "SCREENING", 1)
    assert job["subject_event_crf_file_id"] == 1001
    stamp = job["created_at"].astimezone(UTC).strftime("%Y%m%d_%H%M%S")
    expected_key = f"quarantine/Imaging_CTScan/Imaging_CTScan_P-001_SCREENING_101_1_{job['id']}_{stamp}.dcm"
    assert stack.quarantine_keys() == [expected_key] == [job["destination_key"]]

    (series,) = stack.series()
    assert series["atri_uid"] == f"{job['id']}.{series['id']}"
    assert series["number_of_instances"] == 1
    original = bundled_file("CT_small.dcm").read_bytes()
    stamped = stack.read(stack.names.destination_bucket, expected_key)
    dataset = pydicom.dcmread(io.BytesIO(stamped))
    assert dataset[TRACKING].value == series["atri_uid"]
    assert series["series_uid"] == dataset.SeriesInstanceUID
    assert pixel_bytes(stamped) == pixel_bytes(original)

    head = stack.client("s3").head_object(Bucket=stack.names.destination_bucket, Key=expected_key)
    assert head["Metadata"]["pipeline-file-id"] == str(job["id"])
    assert head["Metadata"]["source-key"] == "subjecteventcrffile/1/101/CT%20Scan/v1.dcm"
    (note,) = stack.notifications()
    assert f"job {job['id']} completed" in note["subject"]
    assert stack.errors() == []


def test_zip_series_keeps_member_names_and_stamps_every_instance(stack: TestStack, tmp_path: Path) -> None:
    archive = write_series_zip(tmp_path / "series.zip")
    with stack.worker():
        stack.upload(MRI_ZIP_KEY, archive)
        (job,) = stack.wait_settled(1)
    assert job["status"] == "Completed" and not job["has_error"]
    (key,) = stack.quarantine_keys()
    assert key.startswith("quarantine/Imaging_MRISeries/Imaging_MRISeries_P-002_WEEK4_102_2_")
    assert key.endswith(".zip")
    (series,) = stack.series()
    assert series["number_of_instances"] == 7 and series["series_number"] == 700
    with (
        zipfile.ZipFile(archive) as original,
        zipfile.ZipFile(io.BytesIO(stack.read(stack.names.destination_bucket, key))) as out,
    ):
        assert out.namelist() == original.namelist()
        for name in out.namelist():
            dataset = pydicom.dcmread(io.BytesIO(out.read(name)))
            assert dataset[TRACKING].value == series["atri_uid"]


def test_zip_with_a_non_dicom_member_is_completed_with_error(stack: TestStack, tmp_path: Path) -> None:
    with stack.worker():
        stack.upload(OTHER_KEY, write_mixed_zip(tmp_path / "mixed.zip"))
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["has_error"], job["error_code"]) == ("Completed", True, "ERRS1013")
    (error,) = stack.errors()
    assert (error["error_code"], error["member"], error["edc_pipeline_file_id"]) == (
        "ERRS1013",
        "#2.txt",  # members are named by position, never by name (names can carry PHI)
        job["id"],
    )
    (key,) = stack.quarantine_keys()
    with zipfile.ZipFile(io.BytesIO(stack.read(stack.names.destination_bucket, key))) as out:
        assert out.read("README.txt") == b"Scanner export notes\n"
    log_keys = stack.keys(stack.names.error_log_bucket)
    assert len(log_keys) == 1 and log_keys[0].startswith(
        "image_pipelines/error_logs/IMAGING/Imaging_CTScan_P-002"
    )
    (note,) = stack.notifications()
    assert "ERRS1013" in note["subject"] and "member=#2.txt" in note["message"]
    assert "README" not in note["message"]  # members are named by position, never by name


def _bad_uploads(tmp_path: Path) -> dict[str, tuple[str, bytes]]:
    """One input per permanent error code the processor raises for a whole file."""

    def zip_of(**members: bytes) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, data in members.items():
                archive.writestr(name.replace("__", "/"), data)
        return buffer.getvalue()

    ct = bundled_file("CT_small.dcm").read_bytes()
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../etc/evil.dcm", ct)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.dcm", b"\0" * (30 * 1024 * 1024))
    return {
        "ERRS1012": ("v2.dcm", write_not_dicom(tmp_path / "bad.dcm").read_bytes()),
        "ERRS1002": ("v2.dcm", bundled_file("MR_truncated.dcm").read_bytes()),
        "ERRS1015": ("v2.zip", b"PK\x03\x04" + b"\x07" * 200),
        "ERRS1010": ("v2.zip", evil.getvalue()),
        "ERRS1016": ("v2.zip", bomb.getvalue()),
        "ERRS1017": ("v2.zip", zip_of(**{"inner.zip": zip_of(**{"a.dcm": ct})})),
        "ERRS1011": ("v2.zip", zip_of(**{"notes.txt": b"hello", "more.txt": b"again"})),
    }


@pytest.mark.parametrize(
    "code", ["ERRS1012", "ERRS1002", "ERRS1015", "ERRS1010", "ERRS1016", "ERRS1017", "ERRS1011"]
)
def test_bad_file_fails_with_its_code_and_is_reported(stack: TestStack, tmp_path: Path, code: str) -> None:
    name, body = _bad_uploads(tmp_path)[code]
    key = f"subjecteventcrffile/1/101/CT Scan/{name}"
    with stack.worker():
        stack.upload(key, body)
        (job,) = stack.wait_settled(1)
        stack.wait_for(lambda: stack.queue_depth() == 0, what="message deleted")
    assert (job["status"], job["has_error"], job["error_code"]) == ("Failed", True, code)
    assert [e["error_code"] for e in stack.errors()] == [code]
    assert stack.quarantine_keys() == []
    (log_key,) = stack.keys(stack.names.error_log_bucket)
    assert log_key.startswith("image_pipelines/error_logs/IMAGING/Imaging_CTScan_P-001_SCREENING_101_1_")
    assert log_key.endswith("_error_log.txt")
    text = stack.read(stack.names.error_log_bucket, log_key).decode()
    assert code in text and f"pipeline_file_id: {job['id']}" in text and key in text
    (note,) = stack.notifications()
    assert code in note["subject"] and f"job {job['id']} Failed" in note["subject"]
    assert len(note["subject"]) <= 100 and "\n" not in note["subject"]
    # What the admin can do next, as command lines.
    assert f"python -m service jobs show {job['id']}" in note["message"]
    assert f"python -m service reprocess --file-id {job['id']}" in note["message"]


def test_duplicate_delivery_makes_one_job_and_one_object(stack: TestStack) -> None:
    stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
    # Read the event S3 sent, then deliver it twice more.
    sqs = stack.client("sqs")
    bodies = []
    while not bodies:
        for m in sqs.receive_message(QueueUrl=stack.env["PIPELINE_QUEUE_URL"], MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            if "ObjectCreated" in m["Body"]:
                bodies.append(m["Body"])
            sqs.delete_message(QueueUrl=stack.env["PIPELINE_QUEUE_URL"], ReceiptHandle=m["ReceiptHandle"])
    for _ in range(3):
        stack.send(bodies[0])
    with stack.worker():
        stack.wait_settled(1)
        stack.wait_for(lambda: stack.queue_depth() == 0, what="all deliveries acknowledged")
    assert len(stack.jobs()) == 1
    assert len(stack.quarantine_keys()) == 1
    assert len(stack.series()) == 1
    assert (
        '"job.duplicate_delivery"' in stack.log.getvalue()
        or '"job.claimed_elsewhere"' in stack.log.getvalue()
    )


def test_sns_wrapped_and_eventbridge_events_are_processed(stack: TestStack, tmp_path: Path) -> None:
    stack.client("s3").put_bucket_notification_configuration(
        Bucket=stack.names.source_bucket, NotificationConfiguration={}
    )
    stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
    stack.upload(MRI_ZIP_KEY, write_series_zip(tmp_path / "s.zip"))
    s3 = stack.client("s3")
    etag_ct = s3.head_object(Bucket=stack.names.source_bucket, Key=CT_KEY)["ETag"].strip('"')
    etag_zip = s3.head_object(Bucket=stack.names.source_bucket, Key=MRI_ZIP_KEY)["ETag"].strip('"')
    inner = json.dumps(
        s3_event(stack.names.source_bucket, "subjecteventcrffile/1/101/CT+Scan/v1.dcm", etag_ct)
    )
    stack.send({"Type": "Notification", "MessageId": "sns-1", "TopicArn": "arn:aws:sns:x", "Message": inner})
    stack.send(
        {
            "version": "0",
            "id": "eb-1",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "time": datetime.now(UTC).isoformat(),
            "region": "us-east-1",
            "detail": {
                "bucket": {"name": stack.names.source_bucket},
                "object": {"key": "subjecteventcrffile/2/102/MRI+Series/v1.zip", "etag": etag_zip},
            },
        }
    )
    with stack.worker():
        jobs = stack.wait_settled(2)
    assert sorted(j["status"] for j in jobs) == ["Completed", "Completed"]
    assert len(stack.quarantine_keys()) == 2


def test_key_with_space_and_plus_sign(stack: TestStack) -> None:
    key = "subjecteventcrffile/1/101/CT Scan/v1+x.dcm"  # EDC row 1005, version code "v1+x"
    with stack.worker():
        stack.upload(key, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
    assert job["source_key"] == key
    assert (job["status"], job["subject_event_crf_file_id"]) == ("Completed", 1005)


def test_test_event_and_unhandled_ddfile_are_acknowledged(stack: TestStack) -> None:
    stack.send({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": stack.names.source_bucket})
    with stack.worker():
        stack.upload("subjecteventcrffile/1/101/Consent Form/v1.pdf", b"%PDF-1.4")
        stack.wait_for(lambda: stack.queue_depth() == 0, what="queue drained")
    assert stack.jobs() == [] and stack.errors() == []
    assert '"pipeline.ddfile_not_handled"' in stack.log.getvalue()


def test_key_outside_the_layout_is_recorded_without_a_job(stack: TestStack) -> None:
    with stack.worker():
        stack.upload("subjecteventcrffile/1/CT Scan/v1.dcm", b"x")
        stack.wait_for(lambda: len(stack.errors()) == 1, what="error row")
        stack.wait_for(lambda: stack.queue_depth() == 0, what="queue drained")
    (error,) = stack.errors()
    assert (error["error_code"], error["edc_pipeline_file_id"]) == ("ERRL1001", None)
    (log_key,) = stack.keys(stack.names.error_log_bucket)
    assert log_key.startswith("image_pipelines/error_logs/unassigned/")
    assert "ERRL1001" in stack.notifications()[0]["subject"]


def test_replica_lag_then_record_appears(stack: TestStack) -> None:
    key = "subjecteventcrffile/1/101/CT Scan/late.dcm"
    with stack.worker(REPLICA_LAG_MAX_S="60"):
        stack.upload(key, bundled_file("CT_small.dcm"))
        stack.wait_for(
            lambda: (
                bool(stack.jobs())
                and stack.jobs()[0]["attempts"] >= 1
                and stack.jobs()[0]["status"] == "Started"
            ),
            what="first lookup missed",
        )
        stack.query("INSERT INTO edc.subjecteventcrffile VALUES (3001, 101, 1, 'late', 5)", url=stack.edc_url)
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["subject_event_crf_file_id"], job["revision_number"]) == ("Completed", 3001, 5)
    assert '"edc.not_found_yet"' in stack.log.getvalue()


def test_record_that_never_appears_fails_with_errl1003(stack: TestStack) -> None:
    with stack.worker():  # REPLICA_LAG_MAX_S=4, interval 1 in the test stack
        stack.upload("subjecteventcrffile/1/101/CT Scan/never.dcm", bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=40)
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL1003")
    assert job["participant_code"] is None  # the EDC fields stay empty
    assert [e["error_code"] for e in stack.errors()] == ["ERRL1003"]
    assert stack.quarantine_keys() == []


def test_several_edc_rows_is_errl1005(stack: TestStack) -> None:
    with stack.worker():
        stack.upload("subjecteventcrffile/1/101/MRI Series/dup.dcm", bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL1005")


def test_source_bucket_gone_is_errl2002(stack: TestStack) -> None:
    stack.send(s3_event("no-such-bucket-anywhere", "subjecteventcrffile/1/101/CT+Scan/v1.dcm", "abc"))
    with stack.worker(SOURCE_BUCKET=""):  # no SOURCE_BUCKET: events for any bucket are taken
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL2002")


def test_object_gone_before_processing_is_errl2002(stack: TestStack) -> None:
    stack.client("s3").put_bucket_notification_configuration(
        Bucket=stack.names.source_bucket, NotificationConfiguration={}
    )
    stack.send(s3_event(stack.names.source_bucket, "subjecteventcrffile/1/101/CT+Scan/v1.dcm", "0123abcd"))
    with stack.worker():
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL2002")


def test_object_over_the_size_limit_is_errl2003(stack: TestStack) -> None:
    with stack.worker(MAX_OBJECT_BYTES="1000"):
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL2003")


def test_existing_quarantine_object_of_another_job_is_never_overwritten(stack: TestStack) -> None:
    frozen = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    key = "quarantine/Imaging_CTScan/Imaging_CTScan_P-001_SCREENING_101_1_1_20260501_120000.dcm"
    stack.client("s3").put_object(
        Bucket=stack.names.destination_bucket,
        Key=key,
        Body=b"someone else's",
        Metadata={"pipeline-file-id": "999"},
    )
    with stack.worker(clock=lambda: frozen):
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
    assert (job["id"], job["status"], job["error_code"]) == (1, "Failed", "ERRL4004")
    assert stack.read(stack.names.destination_bucket, key) == b"someone else's"
    assert stack.series() == []  # no file carries this job's ATRIUIDs


def test_malformed_message_never_stops_the_worker_and_reaches_the_dlq(short_stack: TestStack) -> None:
    stack = short_stack
    with stack.worker() as worker:
        bad_id = stack.send("this is not an event")
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
        stack.wait_for(
            lambda: stack.queue_depth("PIPELINE_DLQ_URL") == 1, timeout=30, what="message in the DLQ"
        )
        assert worker.stats.malformed >= 1
    assert job["status"] == "Completed"
    log = stack.log.getvalue()
    assert f'"message_id": "{bad_id}"' in log and '"worker.malformed_message"' in log
    (error,) = [e for e in stack.errors() if e["error_code"] == "ERRS1001"]  # recorded once
    assert error["edc_pipeline_file_id"] is None and bad_id in error["source_key"]
    assert any("ERRS1001" in n["subject"] for n in stack.notifications())


def test_source_bucket_unavailable_retries_then_fails_on_the_last_delivery(
    short_stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import botocore.exceptions

    from service.s3io import ObjectStore

    def unreachable(*_args: object) -> None:
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3.example")

    monkeypatch.setattr(ObjectStore, "_download", unreachable)
    stack = short_stack
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=40)
        stack.wait_for(
            lambda: stack.queue_depth("PIPELINE_DLQ_URL") == 1, timeout=30, what="message in the DLQ"
        )
    assert (job["status"], job["error_code"], job["attempts"]) == ("Failed", "ERRL8003", 2)
    # Only the last delivery records: the first one left the message for another try.
    assert [e["error_code"] for e in stack.errors()] == ["ERRL2001", "ERRL8003"]


def test_no_phi_in_logs_error_logs_or_notifications(
    stack: TestStack, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    phi: set[str] = set()
    for path in [bundled_file("CT_small.dcm"), bundled_file("MR_small.dcm"), *sorted(series_dir().iterdir())]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        phi |= {
            str(ds.get("PatientName", "")),
            str(ds.get("PatientID", "")),
            str(ds.get("PatientBirthDate", "")),
        }
    phi.discard("")
    assert {"CompressedSamples^CT1", "Doe^Peter"} <= phi
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        stack.upload(OTHER_KEY, write_mixed_zip(tmp_path / "mixed.zip"))
        stack.upload(MRI_ZIP_KEY, write_series_zip(tmp_path / "series.zip"))
        stack.upload(BAD_KEY, bundled_file("MR_truncated.dcm"))
        # An exporter that names folders after the patient, plus a non-DICOM member in one.
        named = io.BytesIO()
        with zipfile.ZipFile(named, "w") as archive:
            archive.write(bundled_file("MR_small.dcm"), "Doe^Peter/IM1.dcm")
            archive.writestr("Doe^Peter/notes.txt", "notes")
        stack.upload("subjecteventcrffile/2/102/MRI Series/v2.zip", named.getvalue())
        stack.wait_settled(5)
    captured = capfd.readouterr()
    texts = {"worker log": stack.log.getvalue(), "stdout": captured.out, "stderr": captured.err}
    for key in stack.keys(stack.names.error_log_bucket):
        texts[key] = stack.read(stack.names.error_log_bucket, key).decode()
    for n, note in enumerate(stack.notifications()):
        texts[f"notification {n}"] = note["subject"] + note["message"]
    assert len(texts) >= 7
    leaks = [(where, value) for where, text in texts.items() for value in phi if value in text]
    assert leaks == []


def test_edc_query_failure_retries_then_fails_with_its_code(short_stack: TestStack) -> None:
    stack = short_stack
    stack.query("ALTER TABLE edc.subjecteventcrffile RENAME TO gone", url=stack.edc_url)
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=40)
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL8003")
    assert [e["error_code"] for e in stack.errors()] == ["ERRL1004", "ERRL8003"]
    assert stack.quarantine_keys() == []


def test_a_missing_destination_bucket_stops_start_up(stack: TestStack) -> None:
    stack.client("s3").delete_bucket(Bucket=stack.names.destination_bucket)
    with (
        pytest.raises(
            ConfigError, match=f"DESTINATION_BUCKET {stack.names.destination_bucket} does not exist"
        ),
        stack.worker(),
    ):
        pass


def test_destination_bucket_gone_is_errl4002_then_dlq_and_frees_the_reservation(
    short_stack: TestStack,
) -> None:
    stack = short_stack
    with stack.worker():
        stack.client("s3").delete_bucket(Bucket=stack.names.destination_bucket)  # after start-up
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=40)
        stack.wait_for(
            lambda: stack.queue_depth("PIPELINE_DLQ_URL") == 1, timeout=30, what="message in the DLQ"
        )
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL8003")
    errors = stack.errors()
    assert [e["error_code"] for e in errors] == ["ERRL4002", "ERRL8003"]
    assert "does not exist" in errors[0]["message"]
    # Nothing can be in a bucket that does not exist: a redrive after the fix writes to the
    # bucket configured by then, not to the one reserved before.
    assert (job["destination_bucket"], job["destination_key"]) == (None, None)


def test_vanished_work_dir_is_errl2005(short_stack: TestStack, tmp_path: Path) -> None:
    stack = short_stack
    work_dir = tmp_path / "scratch"
    work_dir.mkdir()
    # The liveness heartbeat would otherwise live in WORK_DIR too: keep the directory empty.
    with stack.worker(WORK_DIR=str(work_dir), HEARTBEAT_FILE=str(tmp_path / "heartbeat")):
        work_dir.rmdir()
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=40)
    assert [e["error_code"] for e in stack.errors()] == ["ERRL2005", "ERRL8003"]
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL8003")


def test_tracking_database_fault_mid_job_is_errs1004(
    short_stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg2

    from service.tracking import TrackingStore

    def broken(*_args: object) -> None:
        raise psycopg2.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(TrackingStore, "record_edc", broken)
    stack = short_stack
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=40)
    assert [e["error_code"] for e in stack.errors()] == ["ERRS1004", "ERRL8003"]
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL8003")
    assert stack.quarantine_keys() == []


def test_a_bug_is_errl8005_logged_without_its_text(
    short_stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def buggy(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("Doe^Peter")  # the text of an exception may quote a header value

    monkeypatch.setattr("service.pipeline.process_upload", buggy)
    stack = short_stack
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=40)
    assert [e["error_code"] for e in stack.errors()] == ["ERRL8005", "ERRL8003"]
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL8003")
    log = stack.log.getvalue()
    assert '"job.unexpected_error"' in log and '"error_type": "RuntimeError"' in log
    assert "Doe^Peter" not in log


def test_reporting_outage_is_logged_and_does_not_loop(stack: TestStack) -> None:
    missing_topic = stack.env["ADMIN_TOPIC_ARN"] + "-missing"
    with stack.worker(ADMIN_TOPIC_ARN=missing_topic, ERROR_LOG_BUCKET="no-such-log-bucket"):
        stack.upload(BAD_KEY, b"not dicom at all")
        (job,) = stack.wait_settled(1)
        stack.wait_for(lambda: stack.queue_depth() == 0, what="message acknowledged")
    assert (job["status"], job["error_code"]) == ("Failed", "ERRS1012")
    log = stack.log.getvalue()
    assert '"report.error_log_failed"' in log and '"ERRL4007"' in log
    assert '"report.notification_failed"' in log and '"ERRL4006"' in log


def test_a_job_failed_by_exhausted_deliveries_completes_after_a_dlq_redrive(
    short_stack: TestStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    import botocore.exceptions

    from service.s3io import ObjectStore

    real_download = ObjectStore._download

    def unreachable(*_args: object) -> None:
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3.example")

    monkeypatch.setattr(ObjectStore, "_download", unreachable)
    stack = short_stack
    sqs = stack.client("sqs")
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=40)
        assert job["error_code"] == "ERRL8003"
        stack.wait_for(lambda: stack.queue_depth("PIPELINE_DLQ_URL") == 1, timeout=30, what="DLQ")
        monkeypatch.setattr(ObjectStore, "_download", real_download)  # the outage is over
        # What an operator's redrive does: move the DLQ message back to the source queue.
        (message,) = sqs.receive_message(QueueUrl=stack.env["PIPELINE_DLQ_URL"])["Messages"]
        sqs.send_message(QueueUrl=stack.env["PIPELINE_QUEUE_URL"], MessageBody=message["Body"])
        sqs.delete_message(QueueUrl=stack.env["PIPELINE_DLQ_URL"], ReceiptHandle=message["ReceiptHandle"])
        stack.wait_for(lambda: stack.jobs()[0]["status"] == "Completed", timeout=30, what="completed")
    (job,) = stack.jobs()
    assert (job["has_error"], job["error_code"], job["attempts"]) == (False, None, 3)
    assert len(stack.quarantine_keys()) == 1
