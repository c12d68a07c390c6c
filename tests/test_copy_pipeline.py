"""Copy pipelines: files other than DICOM (audio, say) placed in quarantine unchanged."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC

import pytest

from service.cli import main
from service.local.samples import bundled_file
from tests.stackfixtures import PIPELINE_CODE, TestStack

AUDIO_KEY = "subjecteventcrffile/1/101/Audio Note/a1.wav"  # EDC row 4001, added below


@pytest.fixture
def audio_stack(stack: TestStack, capsys: pytest.CaptureFixture[str]) -> TestStack:
    """The test stack with an "Audio Note" ddfile in the EDC and a copy pipeline handling it."""
    stack.query("INSERT INTO edc.ddfile VALUES (3, 1, 'Audio Note')", url=stack.edc_url)
    stack.query("INSERT INTO edc.subjecteventcrffile VALUES (4001, 101, 3, 'a1', 1)", url=stack.edc_url)
    env = {"PIPELINE_DATABASE_URL": stack.pipeline_url}
    args = ["pipelines", "add", "AUDIO", "--label", "Audio notes", "--ddfile", "Audio Note", "--kind", "copy"]
    assert main(args, env) == 0
    assert "(id 2, copy) handles: Audio Note" in capsys.readouterr().out
    return stack


def test_a_copy_pipeline_places_the_file_unchanged_under_the_naming_convention(
    audio_stack: TestStack,
) -> None:
    stack = audio_stack
    body = b"RIFF" + os.urandom(70_000) + b"WAVE"
    with stack.worker():
        stack.upload(AUDIO_KEY, body)
        (job,) = stack.wait_settled(1)
    assert (job["status"], job["has_error"], job["error_code"]) == ("Completed", False, None)
    stamp = job["created_at"].astimezone(UTC).strftime("%Y%m%d_%H%M%S")
    expected = f"quarantine/Imaging_AudioNote/Imaging_AudioNote_P-001_SCREENING_101_1_{job['id']}_{stamp}.wav"
    assert stack.quarantine_keys() == [expected] == [job["destination_key"]]
    assert stack.read(stack.names.destination_bucket, expected) == body
    digest = hashlib.sha256(body).hexdigest()
    assert (job["source_sha256"], job["quarantine_sha256"]) == (digest, digest)
    assert (job["source_bytes"], job["quarantine_bytes"]) == (len(body), len(body))
    assert job["quarantine_s3_checksum"]
    assert (job["members"], job["instances_stamped"], job["system_files"]) == (1, 0, 0)
    assert stack.series() == [] and stack.errors() == []
    head = stack.client("s3").head_object(Bucket=stack.names.destination_bucket, Key=expected)
    assert head["Metadata"]["pipeline-file-id"] == str(job["id"])
    assert head["Metadata"]["sha256"] == head["Metadata"]["source-sha256"] == digest
    (note,) = stack.notifications()
    assert f"job {job['id']} completed" in note["subject"]


def test_a_copy_pipelines_failure_is_reported_as_for_dicom(audio_stack: TestStack) -> None:
    stack = audio_stack
    with stack.worker():  # REPLICA_LAG_MAX_S=4 in the test stack
        stack.upload("subjecteventcrffile/1/101/Audio Note/missing.wav", b"RIFF....WAVE")
        (job,) = stack.wait_settled(1, timeout=40)
        stack.wait_for(lambda: stack.queue_depth() == 0, what="message acknowledged")
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL1003")
    assert [e["error_code"] for e in stack.errors()] == ["ERRL1003"]
    assert stack.quarantine_keys() == []
    (log_key,) = stack.keys(stack.names.error_log_bucket)
    assert log_key.startswith("image_pipelines/error_logs/AUDIO/")
    (note,) = stack.notifications()
    assert "ERRL1003" in note["subject"] and f"job {job['id']}" in note["subject"]


def test_changing_a_pipelines_kind_with_add_and_a_dicom_file_copied_unstamped(
    stack: TestStack, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"PIPELINE_DATABASE_URL": stack.pipeline_url}
    add = ["pipelines", "add", PIPELINE_CODE, "--label", "Imaging uploads", "--ddfile", "CT Scan"]
    assert main([*add, "--kind", "copy"], env) == 0
    assert main(add, env) == 0  # no --kind: an existing pipeline keeps its kind
    capsys.readouterr()
    assert main(["pipelines", "list"], env) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if PIPELINE_CODE in line]
    assert row.split()[1:3] == [PIPELINE_CODE, "copy"]
    original = bundled_file("CT_small.dcm").read_bytes()
    with stack.worker():
        stack.upload("subjecteventcrffile/1/101/CT Scan/v1.dcm", original)
        (job,) = stack.wait_settled(1)
    assert job["status"] == "Completed"
    (key,) = stack.quarantine_keys()
    assert stack.read(stack.names.destination_bucket, key) == original  # no ATRIUID written
    assert stack.series() == []
    assert main([*add, "--kind", "dicom"], env) == 0
    capsys.readouterr()
    assert main(["pipelines", "list"], env) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if PIPELINE_CODE in line]
    assert row.split()[2] == "dicom"
