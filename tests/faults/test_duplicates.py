"""The same S3 event delivered 4 times to 2 worker processes makes one job and one object."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote_plus

import pytest

from service.local.samples import bundled_file, write_series_zip
from tests.faults.conftest import upload_key
from tests.faults.invariants import assert_each_upload_settled_once, completed, wait_queues_empty
from tests.faults.processes import WorkerProcess
from tests.stackfixtures import TestStack, s3_event

pytestmark = pytest.mark.slow

COPIES = 4


def test_four_deliveries_to_two_workers_make_one_job_and_one_object(
    fault_stack: Callable[..., TestStack],
    workers: Callable[..., WorkerProcess],
    record_result: Callable[..., None],
    tmp_path: Path,
) -> None:
    stack = fault_stack()
    zip_key = "subjecteventcrffile/1/101/CT Scan/fault3.zip"  # EDC row 2003: a 7-instance series
    keys = [upload_key(1), upload_key(2), zip_key]
    stack.upload(keys[0], bundled_file("CT_small.dcm"))
    stack.upload(keys[1], bundled_file("MR_small.dcm"))
    stack.upload(keys[2], write_series_zip(tmp_path / "series.zip"))
    s3 = stack.client("s3")
    for key in keys:  # S3 sent one event each; the queue delivers three more (at-least-once)
        head = s3.head_object(Bucket=stack.names.source_bucket, Key=key)
        event = s3_event(
            stack.names.source_bucket, quote_plus(key, safe="/"), head["ETag"], head["ContentLength"]
        )
        for _ in range(COPIES - 1):
            stack.send(json.dumps(event))

    started = time.monotonic()
    pair = [workers(name, stack.env, WORKER_CONCURRENCY="4") for name in ("a", "b")]
    stack.wait_for(lambda: completed(stack) == len(keys), timeout=60, what="every upload completed")
    wait_queues_empty(stack, timeout=60)
    settled_s = time.monotonic() - started

    assert_each_upload_settled_once(stack, keys)
    assert all(not j["has_error"] for j in stack.jobs())
    outputs = [w.output() for w in pair]
    processed = sum(o.count('"worker.message_processed"') for o in outputs)
    assert processed >= len(keys) * COPIES  # every copy was received and acknowledged
    assert sum(o.count('"job.completed"') for o in outputs) == len(keys)
    assert sorted(s["number_of_instances"] for s in stack.series()) == [1, 1, 7]
    record_result(
        "duplicate_deliveries",
        uploads=len(keys),
        deliveries=len(keys) * COPIES,
        workers=len(pair),
        settled_s=round(settled_s, 1),
    )
