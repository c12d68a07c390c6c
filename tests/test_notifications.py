"""Admin notifications an on-call admin can act on: a one-line subject, the meaning, next steps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.errors import ERROR_CODES, ErrorEntry, meaning_of
from service.events import ObjectCreated
from service.reporting import JobReport, next_steps, notification_subject, render_error_log

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
SOURCE = ObjectCreated("uploads", "subjecteventcrffile/1/101/CT Scan/v1.dcm", None, "e", 10, T0)


def report(status: str, job_id: int | None = 42, destination: str | None = None) -> JobReport:
    return JobReport(SOURCE, "IMAGING", job_id, T0, status, destination=destination)


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_code_gives_a_one_line_subject_within_snss_limit(code: str) -> None:
    errors = [ErrorEntry(code, "detail", "process"), ErrorEntry("ERRL8003", "last delivery", "process")]
    for status in ("Failed", "Completed"):
        subject = notification_subject(report(status), errors)
        assert len(subject) <= 100 and "\n" not in subject, subject
        assert subject.startswith("EDC image pipeline: job 42 ") and code in subject


def test_the_subject_names_the_status_code_and_meaning() -> None:
    failed = notification_subject(report("Failed"), [ErrorEntry("ERRS1012", "not DICOM", "process")])
    assert failed == f"EDC image pipeline: job 42 Failed, ERRS1012 {meaning_of('ERRS1012')}"
    exhausted = notification_subject(
        report("Failed"),
        [ErrorEntry("ERRL4002", "x", "quarantine"), ErrorEntry("ERRL8003", "y", "quarantine")],
    )
    assert "Failed (deliveries exhausted), ERRL4002" in exhausted and exhausted.endswith("(+1 more)")
    problem = notification_subject(
        report("Completed"), [ErrorEntry("ERRS1013", "member", "process", "#2.txt")]
    )
    assert "job 42 in quarantine with a problem, ERRS1013" in problem
    unplaced = notification_subject(report("Failed", job_id=None), [ErrorEntry("ERRL1001", "layout", "key")])
    assert unplaced.startswith("EDC image pipeline: job - not started, ERRL1001")


def test_next_steps_are_command_lines_for_the_job_and_advice_for_the_code() -> None:
    failed = next_steps(report("Failed"), [ErrorEntry("ERRL1003", "not found after 900 s", "edc_lookup")])
    assert failed[:2] == [
        "see the job: python -m service jobs show 42",
        "after fixing the cause: python -m service reprocess --file-id 42",
    ]
    assert any(step.startswith("ERRL1003: Once the EDC record exists") for step in failed)
    completed = next_steps(
        report("Completed", destination="quarantine/a/b.zip"), [ErrorEntry("ERRS1013", "m", "process")]
    )
    assert "the file is in quarantine: quarantine/a/b.zip" in completed
    assert not any("reprocess" in step for step in completed)  # nothing to rerun: it is there
    exhausted = next_steps(report("Failed"), [ErrorEntry("ERRL8003", "last", "quarantine")])
    assert any("python -m service redrive" in step for step in exhausted)
    no_job = next_steps(report("Failed", job_id=None), [ErrorEntry("ERRS1001", "not JSON", "event")])
    assert no_job == [f"ERRS1001: {no_job[0].split(': ', 1)[1]}"] and "redrive --dry-run" in no_job[0]


def test_the_error_log_carries_the_meanings_and_the_next_steps() -> None:
    text = render_error_log(report("Failed"), [ErrorEntry("ERRS1002", "pixel data short", "process")], T0)
    assert f"ERRS1002 [process] {meaning_of('ERRS1002')}: pixel data short" in text
    assert text.endswith(
        "next steps:\n  see the job: python -m service jobs show 42\n"
        "  after fixing the cause: python -m service reprocess --file-id 42\n"
        "  ERRS1002: The file is corrupt or truncated: ask the site to upload it again.\n"
    )
