"""EMF metrics: what a completed and a failed upload write to the log stream, on the real stack."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Any

import structlog

from service.local.samples import bundled_file, write_not_dicom
from service.logs import configure_logging, write_line
from service.metrics import NAMESPACE, EmfMetrics, emf_line
from tests.stackfixtures import PIPELINE_CODE, TestStack

CT_KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"  # EDC row 1001, participant P-001
BAD_KEY = "subjecteventcrffile/1/101/CT Scan/v2.dcm"  # EDC row 1003
UNPLACEABLE_KEY = "subjecteventcrffile/not-a-layout.dcm"


def metric_lines(log: str) -> list[dict[str, Any]]:
    """Every line of the stream is one JSON object; these are the EMF ones."""
    documents = [json.loads(line) for line in log.splitlines() if line.strip()]
    return [d for d in documents if "_aws" in d]


def directive(document: dict[str, Any]) -> dict[str, Any]:
    (found,) = document["_aws"]["CloudWatchMetrics"]
    assert found["Namespace"] == NAMESPACE == "EDCImagePipeline"
    assert isinstance(document["_aws"]["Timestamp"], int)
    for metric in found["Metrics"]:  # every metric named is a number at the root
        assert isinstance(document[metric["Name"]], int)
    for dimension_set in found["Dimensions"]:  # every dimension named is a string at the root
        assert all(isinstance(document[name], str) for name in dimension_set)
    return dict(found)


def test_a_completed_and_a_failed_upload_each_write_one_emf_line(stack: TestStack, tmp_path: Path) -> None:
    source = bundled_file("CT_small.dcm")
    with stack.worker(STUDY="ONCO-042"):
        stack.upload(CT_KEY, source)
        stack.upload(BAD_KEY, write_not_dicom(tmp_path / "consent.dcm"))
        jobs = stack.wait_settled(2)
    by_status = {j["status"]: j for j in jobs}
    assert set(by_status) == {"Completed", "Failed"}
    log = stack.log.getvalue()
    lines = metric_lines(log)
    completed = [d for d in lines if "FilesCompleted" in d]
    failed = [d for d in lines if "FilesFailed" in d]
    assert len(completed) == 1 and len(failed) == 1

    done = completed[0]
    found = directive(done)
    assert found["Dimensions"] == [["Study"], ["Study", "PipelineCode"]]
    assert {m["Name"]: m["Unit"] for m in found["Metrics"]} == {
        "FilesCompleted": "Count",
        "ProcessingDurationMs": "Milliseconds",
        "UploadToQuarantineLatencyMs": "Milliseconds",
        "BytesProcessed": "Bytes",
    }
    assert (done["Study"], done["PipelineCode"], done["FilesCompleted"]) == ("ONCO-042", PIPELINE_CODE, 1)
    assert done["BytesProcessed"] == source.stat().st_size == by_status["Completed"]["source_bytes"]
    assert 0 <= done["ProcessingDurationMs"] < 30_000
    assert 0 <= done["UploadToQuarantineLatencyMs"] < 30_000
    assert done["event"] == "metrics.job" and "timestamp" in done  # parseable as a log line too

    bad = failed[0]
    found = directive(bad)
    assert found["Dimensions"] == [
        ["Study"],
        ["Study", "PipelineCode"],
        ["Study", "PipelineCode", "ErrorCode"],
    ]
    assert {m["Name"] for m in found["Metrics"]} == {"FilesFailed", "ProcessingDurationMs"}
    assert (bad["ErrorCode"], bad["FilesFailed"]) == (by_status["Failed"]["error_code"], 1) == ("ERRS1012", 1)
    assert "ErrorCode" not in done

    # No PHI, no keys, no ids: only the three dimensions, the metrics and the log-line fields.
    for document in (done, bad):
        # The timestamp is left out of the id check: "...:41.158Z" holds "1." for job 1.
        text = json.dumps({name: value for name, value in document.items() if name != "timestamp"})
        for leak in ("P-001", "subjecteventcrffile", "CT Scan", str(by_status["Completed"]["id"]) + "."):
            assert leak not in text
        assert set(document) <= {
            "_aws",
            "Study",
            "PipelineCode",
            "ErrorCode",
            "FilesCompleted",
            "FilesFailed",
            "ProcessingDurationMs",
            "UploadToQuarantineLatencyMs",
            "BytesProcessed",
            "event",
            "level",
            "timestamp",
        }


def test_study_defaults_to_the_source_bucket_and_metrics_can_be_turned_off(stack: TestStack) -> None:
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        stack.wait_settled(1)
    (line,) = metric_lines(stack.log.getvalue())
    assert line["Study"] == stack.names.source_bucket

    configure_logging("INFO", "json", stream=stack.log)
    stack.log.seek(0)
    stack.log.truncate()
    with stack.worker(METRICS="off"):
        stack.upload("subjecteventcrffile/1/101/CT Scan/v1+x.dcm", bundled_file("CT_small.dcm"))
        stack.wait_settled(2)
    assert metric_lines(stack.log.getvalue()) == []
    assert '"job.completed"' in stack.log.getvalue()


def test_a_key_that_fits_no_layout_counts_as_failed_unassigned(stack: TestStack) -> None:
    with stack.worker():
        stack.upload(UNPLACEABLE_KEY, b"x")
        stack.wait_for(lambda: any("FilesFailed" in d for d in metric_lines(stack.log.getvalue())))
    (line,) = metric_lines(stack.log.getvalue())
    assert (line["PipelineCode"], line["ErrorCode"]) == ("unassigned", "ERRL1001")


def test_metrics_are_written_whatever_the_log_level_and_never_raise() -> None:
    stream = io.StringIO()
    configure_logging("ERROR", "json", stream=stream)
    EmfMetrics("S").job_completed("P", duration_ms=1, latency_ms=None, bytes_processed=None)
    (line,) = metric_lines(stream.getvalue())
    assert "UploadToQuarantineLatencyMs" not in line and "BytesProcessed" not in line

    def broken(_line: str) -> None:
        raise OSError("stdout closed")

    EmfMetrics("S", write=broken).job_failed("P", "ERRL8005", duration_ms=1)


def test_emf_lines_never_interleave_with_log_lines_from_other_threads() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    line = emf_line({"Study": "S", "PipelineCode": "P"}, {"FilesCompleted": 1}, 0)
    log = structlog.get_logger()

    def emit_metrics() -> None:
        for _ in range(500):
            write_line(line)

    def emit_logs() -> None:
        for n in range(500):
            log.info("test.line", n=n, padding="x" * 200)

    threads = [threading.Thread(target=f) for f in (emit_metrics, emit_logs, emit_metrics, emit_logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2000
    parsed = [json.loads(text) for text in lines]  # each a whole JSON object
    assert sum("_aws" in d for d in parsed) == 1000
