"""Admin notifications an on-call admin can act on: a one-line subject, the meaning, next steps."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from service.errors import ERROR_CODES, ErrorEntry, meaning_of
from service.events import ObjectCreated
from service.notify import Notifier
from service.reporting import (
    NOTIFICATION_LIMIT_BYTES,
    JobReport,
    fit_notification,
    next_steps,
    notification_subject,
    render_error_log,
)
from tests.stackfixtures import TestStack

T0 = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
SOURCE = ObjectCreated("uploads", "subjecteventcrffile/1/101/CT Scan/v1.dcm", None, "e", 10, T0)


def report(status: str, job_id: int | None = 42, destination: str | None = None) -> JobReport:
    return JobReport(SOURCE, "IMAGING", job_id, T0, status, destination=destination)


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_code_gives_a_one_line_subject_within_snss_limit(code: str) -> None:
    errors = [ErrorEntry(code, "detail", "process"), ErrorEntry("ERRL8003", "last delivery", "process")]
    for status in ("Failed", "Completed"):
        subject = notification_subject(report(status), errors)
        assert len(subject) < 100 and "\n" not in subject, subject
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


def test_a_notification_cut_to_snss_limit_keeps_the_next_steps_and_says_what_was_left_out() -> None:
    job = report("Completed", destination="quarantine/Imaging_MRISeries/x.zip")
    errors = [ErrorEntry("ERRS1013", "not DICOM, carried over", "process", f"#{n}.txt") for n in range(9000)]
    text = render_error_log(job, errors, T0)
    assert len(text.encode()) > NOTIFICATION_LIMIT_BYTES
    body = fit_notification(text, "s3://logs/IMAGING/x_error_log.txt")
    assert len(body.encode()) <= NOTIFICATION_LIMIT_BYTES
    lines = body.splitlines()
    assert "pipeline_file_id: 42" in lines and "status: Completed" in lines
    assert f"  ERRS1013 [process] member=#0.txt {meaning_of('ERRS1013')}: not DICOM, carried over" in lines
    (note,) = [line for line in lines if "more line(s) not shown" in line]
    shown = sum(line.startswith("  ERRS1013 [process]") for line in lines)
    assert note == (
        f"  ... {9000 - shown} more line(s) not shown: the full list is in the error log "
        "s3://logs/IMAGING/x_error_log.txt"
    )
    steps = lines[lines.index("next steps:") :]
    assert steps[:3] == [
        "next steps:",
        "  see the job: python -m service jobs show 42",
        "  the file is in quarantine: quarantine/Imaging_MRISeries/x.zip",
    ]
    assert body.endswith("error log: s3://logs/IMAGING/x_error_log.txt\n")


def test_a_failed_jobs_notification_names_job_code_meaning_stage_and_the_commands_to_run() -> None:
    errors = [ErrorEntry("ERRL4001", "participant is empty", "quarantine")]
    subject = notification_subject(report("Failed"), errors)
    body = fit_notification(render_error_log(report("Failed"), errors, T0), None)
    assert subject.startswith("EDC image pipeline: job 42 Failed, ERRL4001 Missing required input")
    assert subject.endswith("...") and len(subject) < 100 and "\n" not in subject  # SNS: under 100
    assert f"  ERRL4001 [quarantine] {meaning_of('ERRL4001')}: participant is empty" in body
    assert "pipeline_file_id: 42" in body and "pipeline: IMAGING" in body
    assert "  see the job: python -m service jobs show 42\n" in body
    assert "  after fixing the cause: python -m service reprocess --file-id 42\n" in body


def test_queued_completions_go_ten_per_call_and_each_reaches_the_admins(stack: TestStack) -> None:
    sns = stack.client("sns")
    calls: list[int] = []
    sns.meta.events.register(
        "before-parameter-build.sns.PublishBatch",
        lambda params, **_: calls.append(len(params["PublishBatchRequestEntries"])),
    )
    notifier = Notifier(sns, stack.env["ADMIN_TOPIC_ARN"])
    for job_id in range(1, 13):
        notifier.publish_later(
            f"EDC image pipeline: job {job_id} completed", f"pipeline_file_id: {job_id}\n", job_id
        )
    assert stack.notifications() == []  # nothing is sent before the flush
    notifier.flush()
    assert calls == [10, 2]
    subjects = sorted(n["subject"] for n in stack.notifications())
    assert subjects == sorted(f"EDC image pipeline: job {n} completed" for n in range(1, 13))
    notifier.flush()
    assert calls == [10, 2]  # nothing left to send


def test_queued_completions_sns_refuses_are_logged_by_job_and_never_raise(stack: TestStack) -> None:
    missing = stack.env["ADMIN_TOPIC_ARN"] + "-deleted"
    notifier = Notifier(stack.client("sns"), missing)
    notifier.publish_later("EDC image pipeline: job 7 completed", "pipeline_file_id: 7\n", 7)
    notifier.flush()
    (line,) = [json.loads(x) for x in stack.log.getvalue().splitlines() if "notification_failed" in x]
    assert (line["error_code"], line["pipeline_file_id"]) == ("ERRL4006", 7)


class FlakySns:
    """An SNS client whose first PublishBatch refuses one entry through SNS's own fault."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def publish_batch(self, TopicArn: str, PublishBatchRequestEntries: list[dict[str, str]]) -> object:  # noqa: N803
        self.batches.append([e["Subject"] for e in PublishBatchRequestEntries])
        if len(self.batches) == 1:
            refused = {
                "Id": PublishBatchRequestEntries[0]["Id"],
                "Code": "InternalError",
                "SenderFault": False,
            }
            return {"Successful": [], "Failed": [refused]}
        return {"Successful": [{"Id": e["Id"]} for e in PublishBatchRequestEntries], "Failed": []}


def test_an_entry_sns_refuses_through_its_own_fault_is_sent_once_more() -> None:
    sns = FlakySns()
    notifier = Notifier(sns, "arn:aws:sns:us-east-1:123456789012:admins")  # type: ignore[arg-type]
    notifier.publish_later("job 1 completed", "pipeline_file_id: 1\n", 1)
    notifier.publish_later("job 2 completed", "pipeline_file_id: 2\n", 2)
    notifier.flush()
    assert sns.batches == [["job 1 completed", "job 2 completed"], ["job 1 completed"]]
