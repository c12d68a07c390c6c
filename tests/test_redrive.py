"""``redrive``: DLQ -> source queue, on moto's server (manual path: moto lacks the move-task API)
and, for SQS's native move task, against a small fake of the two calls it makes."""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.stub import ANY, Stubber

from service.cli import main
from service.local.samples import bundled_file
from service.redrive import Output, RedriveError, RedriveOptions, redrive
from service.sqs import Message, Queue, send_groups
from tests.stackfixtures import TestStack, s3_event

CT_KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"
NOT_JSON = "this is not an event"
POISON_SEND = "a body the source queue refuses"


# -- helpers ------------------------------------------------------------------------------------


def _event_bodies(stack: TestStack, n: int) -> list[str]:
    return [
        json.dumps(
            s3_event(stack.names.source_bucket, f"subjecteventcrffile/1/101/CT+Scan/v{i}.dcm", f"e{i}")
        )
        for i in range(1, n + 1)
    ]


def _fill_dlq(stack: TestStack, bodies: list[str], **send: Any) -> list[str]:
    """Send ``bodies`` straight to the DLQ (as if their deliveries had run out); return their ids."""
    sqs = stack.client("sqs")
    return [
        sqs.send_message(QueueUrl=stack.env["PIPELINE_DLQ_URL"], MessageBody=body, **send)["MessageId"]
        for body in bodies
    ]


def _drain(stack: TestStack, setting: str) -> list[dict[str, Any]]:
    """Every message of a queue (deleted as read)."""
    sqs = stack.client("sqs")
    found: list[dict[str, Any]] = []
    while True:
        messages = sqs.receive_message(
            QueueUrl=stack.env[setting],
            MaxNumberOfMessages=10,
            VisibilityTimeout=60,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return found
        for m in messages:
            found.append(m)
            sqs.delete_message(QueueUrl=stack.env[setting], ReceiptHandle=m["ReceiptHandle"])


def _visible(stack: TestStack, setting: str) -> int:
    attributes = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.env[setting], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


@pytest.fixture
def dlq_stack(stack: TestStack) -> TestStack:
    """The stack with its source queue emptied (moto put an s3:TestEvent there at provisioning)."""
    _drain(stack, "PIPELINE_QUEUE_URL")
    return stack


# -- the manual path on moto's server -------------------------------------------------------------


def test_every_message_goes_back_unchanged_and_the_dlq_is_emptied(
    dlq_stack: TestStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = dlq_stack
    bodies = [*_event_bodies(stack, 3), NOT_JSON]
    dlq_ids = _fill_dlq(stack, bodies)
    (tagged,) = _fill_dlq(
        stack, ["tagged"], MessageAttributes={"origin": {"DataType": "String", "StringValue": "s3"}}
    )
    audit = tmp_path / "audit.jsonl"

    assert main(["redrive", "--audit", str(audit)], stack.env) == 0

    captured = capsys.readouterr()
    report = captured.out.splitlines()
    # moto answers HTTP 500 for the move-task API: detected, and said in one line.
    assert any("native move task unavailable" in line and "manual path" in line for line in report)
    assert report[-1].startswith("redrive: moved 5, failed 0 (left in the DLQ), skipped 0, path manual, ")
    assert stack.queue_depth("PIPELINE_DLQ_URL") == 0
    moved = _drain(stack, "PIPELINE_QUEUE_URL")
    assert Counter(m["Body"] for m in moved) == Counter([*bodies, "tagged"])
    (copy,) = [m for m in moved if m["Body"] == "tagged"]
    assert copy["MessageAttributes"]["origin"]["StringValue"] == "s3"

    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == 5
    by_id = {line["dlq_message_id"]: line for line in lines}
    assert set(by_id) == {*dlq_ids, tagged}
    assert {line["message_id"] for line in lines} == {m["MessageId"] for m in moved}
    for dlq_id, body in zip(dlq_ids, bodies, strict=True):
        line = by_id[dlq_id]
        assert (line["record"], line["outcome"], line["dlq_deleted"], line["error"]) == (
            "redrive.message",
            "moved",
            True,
            None,
        )
        assert line["body_md5"] == hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()
        assert line["receive_count"] >= 1 and line["sent_at"].endswith("Z") and line["moved_at"].endswith("Z")
    assert by_id[dlq_ids[0]]["keys"] == ["subjecteventcrffile/1/101/CT Scan/v1.dcm"]
    assert by_id[dlq_ids[3]]["keys"] is None  # not an event: moved all the same
    text = audit.read_text()
    assert all(body not in text for body in bodies)  # never a message body


def test_without_audit_file_the_records_go_to_stdout_and_the_report_to_stderr(
    dlq_stack: TestStack, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill_dlq(dlq_stack, _event_bodies(dlq_stack, 2))
    assert main(["redrive"], dlq_stack.env) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["outcome"] for r in records] == ["moved", "moved"]
    assert captured.err.splitlines()[-1].startswith("redrive: moved 2, failed 0")


def test_max_moves_exactly_that_many(dlq_stack: TestStack, capsys: pytest.CaptureFixture[str]) -> None:
    stack = dlq_stack
    _fill_dlq(stack, _event_bodies(stack, 5))
    assert main(["redrive", "--max", "2"], stack.env) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2
    assert "native" not in captured.err  # --max goes the manual way without asking
    assert len(_drain(stack, "PIPELINE_QUEUE_URL")) == 2
    assert _visible(stack, "PIPELINE_DLQ_URL") == 3


def test_dry_run_lists_without_moving_and_leaves_the_depth_unchanged(
    dlq_stack: TestStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = dlq_stack
    bodies = [*_event_bodies(stack, 3), NOT_JSON]
    _fill_dlq(stack, bodies)
    assert main(["redrive", "--dry-run"], stack.env) == 0
    captured = capsys.readouterr()
    listed = [json.loads(line) for line in captured.out.splitlines()]
    assert len(listed) == 4 and all(body not in captured.out for body in bodies)
    assert [item["keys"] for item in listed].count(None) == 1
    assert "4 message(s)" in captured.err and "nothing moved" in captured.err.splitlines()[-1]
    # Peeked messages were released at once: all visible, none sent.
    assert _visible(stack, "PIPELINE_DLQ_URL") == 4
    assert stack.queue_depth() == 0

    assert main(["redrive", "--dry-run", "--max", "2"], stack.env) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert _visible(stack, "PIPELINE_DLQ_URL") == 4


def test_a_queue_that_is_not_the_source_queues_dlq_is_refused(
    dlq_stack: TestStack, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = dlq_stack
    other = stack.client("sqs").create_queue(QueueName=f"{stack.names.queue}-other")["QueueUrl"]
    stack.client("sqs").send_message(QueueUrl=other, MessageBody="stays")
    assert main(["redrive"], {**stack.env, "PIPELINE_DLQ_URL": other}) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"PIPELINE_DLQ_URL {other} is not the dead-letter queue of PIPELINE_QUEUE_URL" in line
    assert "its redrive policy names" in line
    # A source queue without a redrive policy (the DLQ itself, say) is refused the same way.
    env = {**stack.env, "PIPELINE_QUEUE_URL": stack.env["PIPELINE_DLQ_URL"]}
    assert main(["redrive", "--max", "1"], env) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("that queue has no redrive policy")
    assert stack.client("sqs").receive_message(QueueUrl=other)["Messages"][0]["Body"] == "stays"


def test_a_queue_that_does_not_exist_is_one_line(
    dlq_stack: TestStack, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = dlq_stack.env["PIPELINE_DLQ_URL"] + "-gone"
    assert main(["redrive"], {**dlq_stack.env, "PIPELINE_DLQ_URL": missing}) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"redrive: reading the attributes of PIPELINE_DLQ_URL {missing} failed: ")
    assert "testing" not in line  # never a credential


@pytest.mark.parametrize("unset", ["PIPELINE_DLQ_URL", "PIPELINE_QUEUE_URL"])
def test_a_missing_queue_setting_is_one_line_naming_it(
    dlq_stack: TestStack, capsys: pytest.CaptureFixture[str], unset: str
) -> None:
    env = {k: v for k, v in dlq_stack.env.items() if k != unset}
    assert main(["redrive"], env) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"configuration error: missing setting {unset}")


def test_max_must_be_a_positive_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["redrive", "--max", "0"], {})
    assert exit_info.value.code == 2
    assert "--max: must be at least 1" in capsys.readouterr().err


def test_a_message_whose_send_failed_stays_in_the_dlq(
    dlq_stack: TestStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = dlq_stack
    bodies = [*_event_bodies(stack, 3), POISON_SEND]
    (*_, poison_id) = _fill_dlq(stack, bodies)
    real_send = Queue._send_batch

    def refuse_one(self: Queue, entries: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
        refused = [e for e in entries if e["MessageBody"] == POISON_SEND]
        response = (
            real_send(self, [e for e in entries if e not in refused]) if len(refused) < len(entries) else {}
        )
        failed = [{"Id": e["Id"], "Code": "InternalError", "SenderFault": "false"} for e in refused]
        return {"Successful": response.get("Successful", []), "Failed": failed}

    monkeypatch.setattr(Queue, "_send_batch", refuse_one)
    audit = tmp_path / "audit.jsonl"

    assert main(["redrive", "--audit", str(audit)], stack.env) == 1

    report = capsys.readouterr().out.splitlines()
    assert f"redrive: message {poison_id} was not sent (InternalError); it stays in the DLQ" in report
    assert report[-1].startswith("redrive: moved 3, failed 1 (left in the DLQ)")
    assert sorted(m["Body"] for m in _drain(stack, "PIPELINE_QUEUE_URL")) == sorted(bodies[:3])
    # Released at the end of the run: visible again at once, for the next redrive.
    assert _visible(stack, "PIPELINE_DLQ_URL") == 1
    (left,) = _drain(stack, "PIPELINE_DLQ_URL")
    assert (left["MessageId"], left["Body"]) == (poison_id, POISON_SEND)
    records = {r["dlq_message_id"]: r for r in map(json.loads, audit.read_text().splitlines())}
    assert len(records) == 4
    assert (records[poison_id]["outcome"], records[poison_id]["message_id"]) == ("not_sent", None)
    assert (records[poison_id]["error"], records[poison_id]["dlq_deleted"]) == ("InternalError", False)


def test_a_refused_batch_stops_the_run_and_deletes_nothing(
    dlq_stack: TestStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = dlq_stack
    _fill_dlq(stack, _event_bodies(stack, 3))

    def denied(self: Queue, entries: list[dict[str, Any]]) -> None:
        error = {
            "Error": {"Code": "AccessDenied", "Message": "not allowed"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        }
        raise botocore.exceptions.ClientError(error, "SendMessageBatch")  # type: ignore[arg-type]

    monkeypatch.setattr(Queue, "_send_batch", denied)
    assert main(["redrive", "--max", "3"], stack.env) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(
        line.startswith("redrive stopped: SendMessageBatch to ") and "AccessDenied" in line for line in err
    )
    assert err[-1].startswith("redrive: moved 0, failed 3")
    assert _visible(stack, "PIPELINE_DLQ_URL") == 3
    assert stack.queue_depth() == 0


def test_messages_sent_back_to_the_dlq_meanwhile_cannot_keep_the_run_going(
    dlq_stack: TestStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The worst case of a worker failing redriven messages at once: every copy lands in the DLQ
    again. The run still ends after the DLQ's depth at the start."""
    stack = dlq_stack
    _fill_dlq(stack, _event_bodies(stack, 3))
    real_send = Queue._send_batch
    dlq_url = stack.env["PIPELINE_DLQ_URL"]

    def back_to_the_dlq(self: Queue, entries: list[dict[str, Any]]) -> dict[str, list[dict[str, str]]]:
        return real_send(Queue(self._sqs, dlq_url), entries)

    monkeypatch.setattr(Queue, "_send_batch", back_to_the_dlq)
    assert main(["redrive"], stack.env) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith("redrive: moved 3, failed 0")
    assert _visible(stack, "PIPELINE_DLQ_URL") == 3  # the three new copies, left for another run


def test_a_message_received_twice_in_one_run_is_moved_once(
    dlq_stack: TestStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQS delivers at least once: a message seen again in the same run is skipped, not re-sent."""
    stack = dlq_stack
    bodies = _event_bodies(stack, 12)
    _fill_dlq(stack, bodies)
    real_receive = Queue.receive
    first: list[Message] = []

    def receive_with_a_repeat(
        self: Queue, max_messages: int, wait_s: int, visibility_s: int
    ) -> list[Message]:
        batch = real_receive(self, max_messages, wait_s, visibility_s)
        if first:
            return [first[0], *batch]  # the first batch's first message, delivered again
        first.extend(batch)
        return batch

    monkeypatch.setattr(Queue, "receive", receive_with_a_repeat)
    assert main(["redrive"], stack.env) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1].startswith(
        "redrive: moved 12, failed 0 (left in the DLQ), skipped 1"
    )
    assert len(captured.out.splitlines()) == 12
    assert sorted(m["Body"] for m in _drain(stack, "PIPELINE_QUEUE_URL")) == sorted(bodies)
    assert stack.queue_depth("PIPELINE_DLQ_URL") == 0


def test_send_groups_keep_each_batch_within_ten_messages_and_256_kib() -> None:
    def message(n: int, size: int) -> Message:
        return Message(f"m{n}", f"r{n}", "x" * size, 1)

    small = [message(n, 100) for n in range(23)]
    assert [len(g) for g in send_groups(small)] == [10, 10, 3]
    large = [message(n, 100 * 1024) for n in range(5)]  # 100 KiB each: two fit a request
    assert [len(g) for g in send_groups(large)] == [2, 2, 1]
    assert [len(g) for g in send_groups([message(0, 300 * 1024), message(1, 10)])] == [1, 1]


# -- end to end: a job failed by exhausted deliveries completes after the redrive ------------------


def test_a_redriven_errl8003_job_completes_with_one_quarantine_object(
    short_stack: TestStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.s3io import ObjectStore

    real_download = ObjectStore._download

    def unreachable(*_args: object) -> None:
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3.example")

    stack = short_stack
    monkeypatch.setattr(ObjectStore, "_download", unreachable)
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=40)
        stack.wait_for(lambda: stack.queue_depth("PIPELINE_DLQ_URL") == 1, timeout=30, what="DLQ")
    assert (job["status"], job["error_code"]) == ("Failed", "ERRL8003")
    monkeypatch.setattr(ObjectStore, "_download", real_download)  # the outage is over

    assert main(["redrive"], stack.env) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["keys"] == [CT_KEY]
    assert stack.queue_depth("PIPELINE_DLQ_URL") == 0

    with stack.worker():
        stack.wait_for(lambda: stack.jobs()[0]["status"] == "Completed", timeout=30, what="completed")
        stack.wait_for(lambda: stack.queue_depth() == 0, timeout=30, what="message acknowledged")
    (job,) = stack.jobs()
    assert (job["status"], job["has_error"], job["error_code"]) == ("Completed", False, None)
    assert len(stack.quarantine_keys()) == 1


# -- the native path, against a fake of the move-task calls ---------------------------------------

DLQ_URL, SOURCE_URL = "https://sqs.example/1/pipeline-dlq", "https://sqs.example/1/pipeline"
DLQ_ARN, SOURCE_ARN = "arn:aws:sqs:eu-west-1:1:pipeline-dlq", "arn:aws:sqs:eu-west-1:1:pipeline"


def _task(status: str, moved: int, to_move: int | None = 7, **extra: Any) -> dict[str, Any]:
    task = {
        "Status": status,
        "SourceArn": DLQ_ARN,
        "DestinationArn": SOURCE_ARN,
        "ApproximateNumberOfMessagesMoved": moved,
        "StartedTimestamp": extra.pop("started", 2000),
        **extra,
    }
    if to_move is not None:
        task["ApproximateNumberOfMessagesToMove"] = to_move
    if status == "RUNNING":
        task.setdefault("TaskHandle", "task-1")
    return task


def _aws_error(code: str, status: int, operation: str, message: str = "") -> botocore.exceptions.ClientError:
    error = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(error, operation)  # type: ignore[arg-type]


def _internal_error(operation: str) -> botocore.exceptions.ClientError:
    # AWS's transient fault: HTTP 500 with its code, as opposed to moto's bare 500 page.
    return _aws_error("InternalError", 500, operation, "We encountered an internal error.")


class FakeMoveTaskSqs:
    """The SQS calls of the native path: queue attributes, and scripted ListMessageMoveTasks answers
    (the first describes the queue before the run; the last repeats; an exception is raised).
    ``start_errors`` are raised by the first StartMessageMoveTask calls. Any receive from the DLQ
    (the manual path) is recorded."""

    def __init__(
        self,
        *listings: list[dict[str, Any]] | Exception,
        depth: int = 7,
        start_errors: tuple[Exception, ...] = (),
    ) -> None:
        self.listings = list(listings)
        self.depth = depth
        self.started: list[tuple[str, str]] = []
        self.start_errors = list(start_errors)
        self.list_calls = 0
        self.received: list[str] = []

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:  # noqa: N803
        if QueueUrl == DLQ_URL:
            return {
                "Attributes": {
                    "QueueArn": DLQ_ARN,
                    "ApproximateNumberOfMessages": str(self.depth),
                    "ApproximateNumberOfMessagesNotVisible": "0",
                }
            }
        policy = json.dumps({"deadLetterTargetArn": DLQ_ARN, "maxReceiveCount": 40})
        return {"Attributes": {"QueueArn": SOURCE_ARN, "RedrivePolicy": policy}}

    def list_message_move_tasks(self, SourceArn: str, MaxResults: int) -> dict[str, Any]:  # noqa: N803
        assert SourceArn == DLQ_ARN
        self.list_calls += 1
        listing = self.listings.pop(0) if len(self.listings) > 1 else self.listings[0]
        if isinstance(listing, Exception):
            raise listing
        return {"Results": listing}

    def start_message_move_task(self, SourceArn: str, DestinationArn: str) -> dict[str, str]:  # noqa: N803
        self.started.append((SourceArn, DestinationArn))
        if self.start_errors:
            raise self.start_errors.pop(0)
        return {"TaskHandle": "task-1"}

    def receive_message(self, QueueUrl: str, **_: Any) -> dict[str, Any]:  # noqa: N803
        self.received.append(QueueUrl)
        return {"Messages": []}


def _run_native(fake: FakeMoveTaskSqs) -> tuple[int, list[str], list[dict[str, Any]]]:
    report, audit = io.StringIO(), io.StringIO()
    sleeps: list[float] = []
    summary = redrive(
        fake,  # type: ignore[arg-type]
        DLQ_URL,
        SOURCE_URL,
        RedriveOptions(poll_interval_s=0.5),
        Output(audit=audit, report=report, listing=io.StringIO()),
        sleep=sleeps.append,
    )
    report.write(summary.line() + "\n")
    return (
        summary.exit_code,
        report.getvalue().splitlines(),
        [json.loads(x) for x in audit.getvalue().splitlines()],
    )


def test_native_task_is_followed_from_running_to_completed() -> None:
    old = _task("COMPLETED", 3, started=1000)  # an earlier redrive: never taken for this one
    fake = FakeMoveTaskSqs(
        [old],
        [old],  # just started, not listed yet
        [_task("RUNNING", 0), old],
        [_task("RUNNING", 4), old],
        [_task("COMPLETED", 7, to_move=None), old],
    )
    code, report, (record,) = _run_native(fake)
    assert code == 0
    assert fake.started == [(DLQ_ARN, SOURCE_ARN)]
    assert "redrive: started move task task-1 for about 7 message(s)" in report
    assert "redrive: task RUNNING: moved 0 of 7" in report and "redrive: task RUNNING: moved 4 of 7" in report
    assert "redrive: task COMPLETED: moved 7 of 7" in report
    assert report[-1].startswith(
        "redrive: moved 7, failed 0 (left in the DLQ), skipped 0, path native (task COMPLETED)"
    )
    assert (record["record"], record["task_handle"], record["status"], record["moved"]) == (
        "redrive.task",
        "task-1",
        "COMPLETED",
        7,
    )
    assert (record["to_move"], record["failure_reason"]) == (7, None)


def test_native_task_failed_reports_its_reason_and_exits_1() -> None:
    fake = FakeMoveTaskSqs(
        [], [_task("RUNNING", 2)], [_task("FAILED", 2, FailureReason="AccessDenied on the destination")]
    )
    code, report, (record,) = _run_native(fake)
    assert code == 1
    assert "redrive: move task task-1 FAILED: AccessDenied on the destination" in report
    assert report[-1].startswith(
        "redrive: moved 2, failed 5 (left in the DLQ), skipped 0, path native (task FAILED)"
    )
    assert (record["status"], record["failure_reason"]) == ("FAILED", "AccessDenied on the destination")


def test_native_task_cancelled_exits_1() -> None:
    fake = FakeMoveTaskSqs([], [_task("RUNNING", 1)], [_task("CANCELLING", 3)], [_task("CANCELLED", 3)])
    code, report, (record,) = _run_native(fake)
    assert code == 1
    assert "redrive: task CANCELLING: moved 3 of 7" in report
    assert "redrive: move task task-1 ended CANCELLED; the rest stays in the DLQ" in report
    assert record["status"] == "CANCELLED"


def test_a_running_task_is_followed_and_no_second_one_started() -> None:
    running = _task("RUNNING", 5, TaskHandle="task-0", started=1500)
    fake = FakeMoveTaskSqs([running], [running], [_task("COMPLETED", 7, started=1500)])
    code, report, (record,) = _run_native(fake)
    assert code == 0 and fake.started == []
    assert any(
        "already running" in line and "task-0" in line and "not starting a second" in line for line in report
    )
    assert (record["task_handle"], record["status"]) == ("task-0", "COMPLETED")


def test_native_path_with_an_empty_dlq_starts_nothing() -> None:
    fake = FakeMoveTaskSqs([], depth=0)
    code, report, records = _run_native(fake)
    assert (code, fake.started, records) == (0, [], [])
    assert report[-1].startswith("redrive: moved 0, failed 0")


def test_a_transient_500_while_following_is_retried_and_the_run_completes_natively() -> None:
    fake = FakeMoveTaskSqs(
        [],
        [_task("RUNNING", 2)],
        _internal_error("ListMessageMoveTasks"),
        _internal_error("ListMessageMoveTasks"),
        [_task("COMPLETED", 7)],
    )
    code, report, (record,) = _run_native(fake)
    assert code == 0
    assert fake.received == [] and len(fake.started) == 1
    assert fake.list_calls == 5  # the two failed polls were tried again
    assert not any("manual" in line for line in report)
    assert report[-1].startswith("redrive: moved 7, failed 0 (left in the DLQ), skipped 0, path native")
    assert (record["status"], record["moved"], record["error"]) == ("COMPLETED", 7, None)


def test_a_persistent_failure_while_following_ends_with_an_error_and_never_goes_manual() -> None:
    fake = FakeMoveTaskSqs(
        [], [_task("RUNNING", 0)], [_task("RUNNING", 3)], _internal_error("ListMessageMoveTasks")
    )
    report, audit = io.StringIO(), io.StringIO()
    with pytest.raises(RedriveError) as error:
        redrive(
            fake,  # type: ignore[arg-type]
            DLQ_URL,
            SOURCE_URL,
            RedriveOptions(poll_interval_s=0.5),
            Output(audit=audit, report=report, listing=io.StringIO()),
            sleep=lambda _s: None,
        )
    assert fake.received == []  # no manual receive beside a task that may still be moving
    assert "manual" not in report.getvalue()
    line = str(error.value)
    assert error.value.exit_code == 1 and "\n" not in line
    assert line.startswith("lost track of move task task-1 (last seen RUNNING, moved 3 of 7): ")
    assert "ListMessageMoveTasks for" in line and "InternalError (HTTP 500)" in line
    (record,) = [json.loads(x) for x in audit.getvalue().splitlines()]
    assert (record["task_handle"], record["status"], record["moved"], record["to_move"]) == (
        "task-1",
        "RUNNING",
        3,
        7,
    )
    assert record["error"] == line.split(": ", 1)[1].split("; it may still be running")[0]


def test_the_cli_reports_a_lost_task_in_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeMoveTaskSqs([], [_task("RUNNING", 1)], _internal_error("ListMessageMoveTasks"))
    monkeypatch.setattr("service.app.aws_client", lambda *_a, **_k: fake)
    monkeypatch.setattr("service.redrive.POLL_INTERVAL_S", 0.0)
    env = {"PIPELINE_QUEUE_URL": SOURCE_URL, "PIPELINE_DLQ_URL": DLQ_URL}
    assert main(["redrive", "--audit", "/dev/null"], env) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("redrive:")]
    assert err == [err[0]] and err[0].startswith("redrive: lost track of move task task-1 (last seen RUNNING")
    assert fake.received == []


def test_a_transient_500_on_the_first_start_is_retried_not_taken_for_a_missing_api() -> None:
    fake = FakeMoveTaskSqs(
        [], [_task("COMPLETED", 7)], start_errors=(_internal_error("StartMessageMoveTask"),)
    )
    code, _report, (record,) = _run_native(fake)
    assert code == 0 and len(fake.started) == 2 and fake.received == []
    assert record["status"] == "COMPLETED"


def test_a_start_that_keeps_failing_ends_with_an_error_not_the_manual_path() -> None:
    fake = FakeMoveTaskSqs([], start_errors=tuple(_internal_error("StartMessageMoveTask") for _ in range(9)))
    with pytest.raises(RedriveError) as error:
        _run_native(fake)
    assert str(error.value).startswith(
        f"StartMessageMoveTask from {DLQ_URL} failed: InternalError (HTTP 500)"
    )
    assert len(fake.started) == 5 and fake.received == []  # aws_retry's attempts, then the error


@pytest.mark.parametrize(
    "answer",
    [
        _aws_error(
            "500", 500, "StartMessageMoveTask", "<!doctype html><title>500 Internal Server Error</title>"
        ),
        _aws_error("AWS.SimpleQueueService.UnsupportedOperation", 400, "StartMessageMoveTask"),
        _aws_error("501", 501, "StartMessageMoveTask"),
    ],
    ids=["moto-bare-500", "unsupported-operation", "http-501"],
)
def test_only_the_first_start_can_say_the_api_is_missing(answer: botocore.exceptions.ClientError) -> None:
    fake = FakeMoveTaskSqs(_aws_error("500", 500, "ListMessageMoveTasks"), start_errors=(answer,))
    code, report, records = _run_native(fake)
    assert (code, records) == (0, [])  # nothing to receive in this fake
    assert len(fake.started) == 1 and fake.received == [DLQ_URL]  # the manual path, at once
    assert any("native move task unavailable (StartMessageMoveTask answered HTTP" in line for line in report)
    # The same answer on a retry (a first attempt failed transiently) is no proof: an error, no fallback.
    fake = FakeMoveTaskSqs([], start_errors=(_internal_error("StartMessageMoveTask"), answer))
    if answer.response["ResponseMetadata"]["HTTPStatusCode"] >= 500:
        fake.start_errors.extend([answer] * 5)
    with pytest.raises(RedriveError):
        _run_native(fake)
    assert fake.received == []


# -- the native path's requests and answers, checked against botocore's SQS model ------------------


def _stubbed_sqs() -> tuple[Any, Stubber]:
    client = boto3.client(
        "sqs", region_name="eu-west-1", aws_access_key_id="stub", aws_secret_access_key="stub"
    )
    stubber = Stubber(client)
    stubber.add_response(
        "get_queue_attributes",
        {
            "Attributes": {
                "QueueArn": DLQ_ARN,
                "ApproximateNumberOfMessages": "7",
                "ApproximateNumberOfMessagesNotVisible": "0",
            }
        },
        {"QueueUrl": DLQ_URL, "AttributeNames": ANY},
    )
    policy = json.dumps({"deadLetterTargetArn": DLQ_ARN, "maxReceiveCount": 5})
    stubber.add_response(
        "get_queue_attributes",
        {"Attributes": {"QueueArn": SOURCE_ARN, "RedrivePolicy": policy}},
        {"QueueUrl": SOURCE_URL, "AttributeNames": ANY},
    )
    return client, stubber


# Exactly what ListMessageMoveTasks is asked: the DLQ and the documented maximum of 10 results.
LIST_REQUEST = {"SourceArn": DLQ_ARN, "MaxResults": 10}


def _documented_task(status: str, moved: int, **fields: Any) -> dict[str, Any]:
    return {
        "Status": status,
        "SourceArn": DLQ_ARN,
        "DestinationArn": SOURCE_ARN,
        "ApproximateNumberOfMessagesMoved": moved,
        "StartedTimestamp": 1_700_000_000_000,
        **fields,
    }


@pytest.mark.parametrize(
    ("ending", "exit_code", "summary"),
    [
        ([_documented_task("COMPLETED", 7)], 0, "moved 7, failed 0"),
        (
            [
                _documented_task(
                    "FAILED", 2, ApproximateNumberOfMessagesToMove=7, FailureReason="AccessDenied"
                )
            ],
            1,
            "moved 2, failed 5",
        ),
        (
            [
                _documented_task("CANCELLING", 3, TaskHandle="handle-1", ApproximateNumberOfMessagesToMove=7),
                _documented_task("CANCELLED", 3, ApproximateNumberOfMessagesToMove=7),
            ],
            1,
            "moved 3, failed 4",
        ),
    ],
    ids=["completed", "failed", "cancelled"],
)
def test_the_native_path_sends_the_documented_requests_and_reads_the_documented_answers(
    ending: list[dict[str, Any]], exit_code: int, summary: str
) -> None:
    client, stubber = _stubbed_sqs()
    earlier = _documented_task("COMPLETED", 1, StartedTimestamp=1_600_000_000_000)
    stubber.add_response("list_message_move_tasks", {"Results": [earlier]}, LIST_REQUEST)
    # No MaxNumberOfMessagesPerSecond: SQS picks the rate. DestinationArn is the source queue.
    stubber.add_response(
        "start_message_move_task",
        {"TaskHandle": "handle-1"},
        {"SourceArn": DLQ_ARN, "DestinationArn": SOURCE_ARN},
    )
    running = _documented_task(
        "RUNNING",
        2,
        TaskHandle="handle-1",
        ApproximateNumberOfMessagesToMove=7,
        MaxNumberOfMessagesPerSecond=500,
    )
    stubber.add_response("list_message_move_tasks", {"Results": [running, earlier]}, LIST_REQUEST)
    # A transient fault while following: retried, not taken for a missing API.
    stubber.add_client_error(
        "list_message_move_tasks", "InternalError", "internal error", 500, expected_params=LIST_REQUEST
    )
    for task in ending:
        stubber.add_response("list_message_move_tasks", {"Results": [task, earlier]}, LIST_REQUEST)
    report, audit = io.StringIO(), io.StringIO()
    with stubber:
        result = redrive(
            client,
            DLQ_URL,
            SOURCE_URL,
            RedriveOptions(poll_interval_s=0.0),
            Output(audit=audit, report=report, listing=io.StringIO()),
            sleep=lambda _s: None,
        )
    stubber.assert_no_pending_responses()  # every request above was sent, in this order
    assert result.exit_code == exit_code and result.path == "native"
    assert result.line().startswith(f"redrive: {summary} (left in the DLQ), skipped 0, path native")
    lines = report.getvalue().splitlines()
    assert "redrive: started move task handle-1 for about 7 message(s)" in lines
    assert "redrive: task RUNNING: moved 2 of 7" in lines
    (record,) = [json.loads(x) for x in audit.getvalue().splitlines()]
    final = ending[-1]
    assert (record["task_handle"], record["status"], record["moved"], record["to_move"]) == (
        "handle-1",
        final["Status"],
        final["ApproximateNumberOfMessagesMoved"],
        7,
    )
    assert record["failure_reason"] == final.get("FailureReason")
    if final["Status"] == "FAILED":
        assert "redrive: move task handle-1 FAILED: AccessDenied" in lines
    if final["Status"] == "CANCELLED":
        assert "redrive: task CANCELLING: moved 3 of 7" in lines
