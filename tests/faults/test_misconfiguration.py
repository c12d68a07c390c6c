"""A wrong destination bucket, fixed, then recovered with ``redrive`` and ``reprocess``.

Two ways a deployment gets the bucket wrong: a typo, which the start-up check refuses before a
message is taken, and a bucket that disappears under a running worker (deleted, or the stack
pointed at one being torn down), which only the uploads find out: their deliveries run out
(ERRL8003) and their messages land in the DLQ. The operator then points the worker at the right
bucket and recovers one upload with ``redrive`` and the other with ``reprocess``, as an on-call
admin would with the commands the notification names.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from service.local.samples import bundled_file
from tests.faults.conftest import upload_key
from tests.faults.invariants import assert_each_upload_settled_once, completed, wait_queues_empty
from tests.faults.processes import WorkerProcess, run_command
from tests.stackfixtures import TestStack

pytestmark = pytest.mark.slow

MAX_RECEIVE_COUNT = 3


def by_key(stack: TestStack) -> dict[str, dict[str, object]]:
    return {str(j["source_key"]): j for j in stack.jobs() if j["reprocess_of"] is None}


def test_wrong_destination_bucket_fixed_then_recovered_with_redrive_and_reprocess(
    fault_stack: Callable[..., TestStack],
    workers: Callable[..., WorkerProcess],
    record_result: Callable[..., None],
    tmp_path: Path,
) -> None:
    stack = fault_stack(max_receive_count=MAX_RECEIVE_COUNT)
    s3 = stack.client("s3")
    right = stack.names.destination_bucket
    keys = [upload_key(n) for n in range(1, 4)]
    stack.upload(keys[0], bundled_file("CT_small.dcm"))

    # 1. A typo: refused at start-up, with one line naming the setting; no message is taken.
    typo = workers("typo", stack.env, DESTINATION_BUCKET=f"{right}-typo")
    assert typo.wait(timeout=60) == 2
    errors = [line for line in typo.output().splitlines() if "DESTINATION_BUCKET" in line]
    assert len(errors) == 1 and "does not exist" in errors[0], typo.output()[-2000:]
    assert stack.jobs() == []

    # Fixed: the waiting upload completes on its first delivery.
    fixed = workers("fixed", stack.env)
    stack.wait_for(lambda: completed(stack) == 1, timeout=60, what="the first upload completed")
    assert by_key(stack)[keys[0]]["attempts"] == 1
    fixed.stop()

    # 2. The bucket disappears under a running worker: the start-up check passed, the uploads fail.
    doomed = f"{right}-doomed"
    s3.create_bucket(Bucket=doomed)
    vanishing = workers("vanishing", stack.env, DESTINATION_BUCKET=doomed)
    vanishing.wait_started()
    s3.delete_bucket(Bucket=doomed)
    uploaded_at = time.monotonic()
    for key in keys[1:]:
        stack.upload(key, bundled_file("CT_small.dcm"))
    stack.wait_for(
        lambda: stack.queue_depth("PIPELINE_DLQ_URL") == 2, timeout=120, what="both messages in the DLQ"
    )
    to_dlq_s = time.monotonic() - uploaded_at
    jobs = by_key(stack)
    assert [jobs[k]["status"] for k in keys[1:]] == ["Failed", "Failed"]
    codes = {str(e["error_code"]) for e in stack.errors()}
    assert {"ERRL4002", "ERRL8003"} <= codes, codes
    assert all(jobs[k]["destination_key"] is None for k in keys[1:]), "a key reserved in no bucket"
    vanishing.stop()

    # 3. Fixed again (the right bucket), then recovered: one upload by redrive, one by reprocess.
    recovering_at = time.monotonic()
    workers("recovered", stack.env).wait_started()
    audit = tmp_path / "redrive.jsonl"
    redrive = run_command(["redrive", "--max", "1", "--audit", str(audit)], stack.env)
    assert redrive.returncode == 0, redrive.stderr + redrive.stdout
    assert "moved 1" in redrive.stdout, redrive.stdout
    (line,) = [json.loads(x) for x in audit.read_text().splitlines()]
    redriven = line["keys"][0]
    other = next(k for k in keys[1:] if k != redriven)
    stack.wait_for(lambda: completed(stack) == 2, timeout=60, what="the redriven upload completed")
    redrive_s = time.monotonic() - recovering_at

    reprocess_at = time.monotonic()
    reprocess = run_command(["reprocess", "--status", "Failed", "--code", "ERRL8003"], stack.env)
    assert reprocess.returncode == 0, reprocess.stderr + reprocess.stdout
    assert "resume" in reprocess.stdout, reprocess.stdout
    stack.wait_for(lambda: completed(stack) == 3, timeout=60, what="the reprocessed upload completed")
    reprocess_s = time.monotonic() - reprocess_at
    # Resumed in place: no new execution beside the upload's one job.
    assert [j["reprocess_of"] for j in stack.jobs()] == [None, None, None]

    # The DLQ still holds the resumed upload's first message: redriven, it is a harmless duplicate.
    leftover = run_command(["redrive"], stack.env)
    assert leftover.returncode == 0, leftover.stderr + leftover.stdout
    wait_queues_empty(stack)

    assert_each_upload_settled_once(stack, keys)
    assert stack.keys(right, "quarantine/") == stack.quarantine_keys()
    assert doomed not in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    jobs = by_key(stack)
    assert all(jobs[k]["status"] == "Completed" for k in keys)
    assert jobs[other]["destination_key"] is not None
    record_result(
        "wrong_destination_bucket",
        max_receive_count=MAX_RECEIVE_COUNT,
        startup_refused=True,
        failed_to_dlq=2,
        upload_to_dlq_s=round(to_dlq_s, 1),
        redrive_to_completed_s=round(redrive_s, 1),
        reprocess_to_completed_s=round(reprocess_s, 1),
    )
