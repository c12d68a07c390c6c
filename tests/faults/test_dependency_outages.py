"""Outages of the pipeline database and of S3 cost no deliveries and lose no upload.

The queue's maxReceiveCount is 3 here (5 is what we recommend): a worker that burned a delivery
per poll during the outage would send these uploads to the DLQ.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from service.local.samples import bundled_file
from tests.faults.conftest import upload_key
from tests.faults.invariants import assert_each_upload_settled_once, completed, wait_queues_empty
from tests.faults.processes import WorkerProcess
from tests.faults.proxies import S3FaultProxy, TcpProxy
from tests.stackfixtures import TestStack

pytestmark = pytest.mark.slow

DB_OUTAGE_S = 60
S3_FAULT_S = 30


def through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{proxy.port}")))


@pytest.fixture
def s3_proxy(moto_endpoint: str) -> Iterator[S3FaultProxy]:
    proxy = S3FaultProxy(moto_endpoint)
    yield proxy
    proxy.close()


def test_pipeline_database_down_60_s_costs_no_deliveries(
    fault_stack: Callable[..., TestStack],
    workers: Callable[..., WorkerProcess],
    record_result: Callable[..., None],
) -> None:
    stack = fault_stack(max_receive_count=3)
    port = urlsplit(stack.pipeline_url).port
    assert port is not None
    proxy = TcpProxy("127.0.0.1", port)
    try:
        worker = workers("worker", stack.env, PIPELINE_DATABASE_URL=through(stack.pipeline_url, proxy))
        worker.wait_started()
        keys = [upload_key(n) for n in range(1, 5)]
        stack.upload(keys[0], bundled_file("CT_small.dcm"))
        stack.wait_for(lambda: completed(stack) == 1, timeout=30, what="the first upload completed")

        proxy.cut()
        down_at = time.monotonic()
        for key in keys[1:]:  # arrive during the outage
            stack.upload(key, bundled_file("CT_small.dcm"))
        time.sleep(max(0.0, down_at + DB_OUTAGE_S - time.monotonic()))
        assert worker.process.poll() is None, "the worker died in the outage"
        assert completed(stack) == 1
        proxy.restore()
        restored_at = time.monotonic()
        stack.wait_for(lambda: completed(stack) == len(keys), timeout=90, what="every upload completed")
        recovery_s = time.monotonic() - restored_at
        wait_queues_empty(stack)
    finally:
        proxy.close()

    assert_each_upload_settled_once(stack, keys)
    jobs = stack.jobs()
    assert all(not j["has_error"] for j in jobs)
    # One claim per job: the outage spent no delivery (an empty DLQ alone would not show that).
    assert sorted((j["source_key"], j["attempts"]) for j in jobs) == sorted((key, 1) for key in keys)
    output = worker.output()
    assert '"breaker.opened"' in output and '"breaker.closed"' in output
    assert '"PIPELINE_DATABASE"' in output or '"pipeline_database"' in output
    record_result(
        "pipeline_database_down",
        outage_s=DB_OUTAGE_S,
        max_receive_count=3,
        recovery_s=round(recovery_s, 1),
        refused_connections=proxy.refused,
        uploads=len(keys),
    )


def test_s3_slowing_down_half_the_object_requests_for_30_s_loses_nothing(
    fault_stack: Callable[..., TestStack],
    workers: Callable[..., WorkerProcess],
    s3_proxy: S3FaultProxy,
    record_result: Callable[..., None],
) -> None:
    stack = fault_stack(max_receive_count=3)
    worker = workers("worker", stack.env, AWS_ENDPOINT_URL=s3_proxy.endpoint)
    worker.wait_started()
    keys = [upload_key(n) for n in range(1, 7)]
    s3_proxy.slow_down_share = 0.5
    fault_at = time.monotonic()
    for key in keys:  # spread over the fault
        stack.upload(key, bundled_file("CT_small.dcm"))
        time.sleep(S3_FAULT_S / len(keys))
    time.sleep(max(0.0, fault_at + S3_FAULT_S - time.monotonic()))
    s3_proxy.slow_down_share = 0.0
    ended_at = time.monotonic()
    stack.wait_for(lambda: completed(stack) == len(keys), timeout=90, what="every upload completed")
    recovery_s = time.monotonic() - ended_at
    wait_queues_empty(stack)

    assert s3_proxy.slowed_down > 0
    assert_each_upload_settled_once(stack, keys)
    assert all(not j["has_error"] for j in stack.jobs())
    record_result(
        "s3_slow_down",
        fault_s=S3_FAULT_S,
        share=0.5,
        object_requests=s3_proxy.object_requests,
        answered_503=s3_proxy.slowed_down,
        recovery_s=round(recovery_s, 1),
        max_receive_count=3,
        uploads=len(keys),
    )
