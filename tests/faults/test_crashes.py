"""A worker that dies (kill -9) or is stopped (SIGTERM) mid-file loses no upload.

Settings are the defaults a deployment runs with (VISIBILITY_TIMEOUT_S 60, which is also the
job lease), so the recovery times measured here are what an operator sees.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator

import pytest

from service.local.samples import bundled_file
from tests.faults.conftest import upload_key
from tests.faults.invariants import assert_each_upload_settled_once, completed, wait_queues_empty
from tests.faults.processes import WorkerProcess
from tests.faults.proxies import S3FaultProxy
from tests.stackfixtures import TestStack

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_proxy(moto_endpoint: str) -> Iterator[S3FaultProxy]:
    proxy = S3FaultProxy(moto_endpoint)
    yield proxy
    proxy.close()


def hold_source_downloads(stack: TestStack, seconds: float) -> Callable[[str, str], float]:
    """Hold every GET of an upload: the worker is then mid-file for that long."""
    prefix = f"/{stack.names.source_bucket}/"
    return lambda method, path: seconds if method == "GET" and path.startswith(prefix) else 0.0


def test_kill_9_mid_file_completes_on_another_worker_within_two_minutes(
    fault_stack: Callable[..., TestStack],
    workers: Callable[..., WorkerProcess],
    s3_proxy: S3FaultProxy,
    record_result: Callable[..., None],
) -> None:
    stack = fault_stack()
    s3_proxy.hold = hold_source_downloads(stack, 600)
    doomed = workers("doomed", stack.env, AWS_ENDPOINT_URL=s3_proxy.endpoint)
    doomed.wait_started()
    key = upload_key(1)
    stack.upload(key, bundled_file("CT_small.dcm"))
    stack.wait_for(lambda: s3_proxy.held == 1, timeout=30, what="the download under way")
    (job,) = stack.jobs()
    assert job["status"] == "In Progress"

    doomed.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    doomed.wait(timeout=10)
    survivor = workers("survivor", stack.env)
    stack.wait_for(lambda: completed(stack) == 1, timeout=120, what="the job completed by the survivor")
    recovery_s = time.monotonic() - killed_at

    assert_each_upload_settled_once(stack, [key])
    (job,) = stack.jobs()
    assert (job["status"], job["has_error"], job["attempts"]) == ("Completed", False, 2)
    wait_queues_empty(stack)
    assert '"job.completed"' in survivor.output()
    record_result("kill_9_mid_file", recovery_s=round(recovery_s, 1), limit_s=120, deliveries=2)


def test_sigterm_mid_batch_releases_unfinished_work_at_once(
    fault_stack: Callable[..., TestStack],
    workers: Callable[..., WorkerProcess],
    s3_proxy: S3FaultProxy,
    record_result: Callable[..., None],
) -> None:
    stack = fault_stack()
    s3_proxy.hold = hold_source_downloads(stack, 60)
    grace_s = 3
    stopping = workers(
        "stopping", stack.env, AWS_ENDPOINT_URL=s3_proxy.endpoint, SHUTDOWN_GRACE_S=str(grace_s)
    )
    stopping.wait_started()
    keys = [upload_key(n) for n in range(1, 5)]
    for key in keys:
        stack.upload(key, bundled_file("CT_small.dcm"))
    stack.wait_for(lambda: s3_proxy.held == 2, timeout=30, what="two downloads under way")

    stopping.signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    assert stopping.wait(timeout=grace_s + 20) == 0
    stop_s = time.monotonic() - signalled_at
    output = stopping.output()
    assert '"worker.released_unfinished"' in output and '"ERRL8004"' in output

    exited_at = time.monotonic()
    workers("next", stack.env)
    stack.wait_for(lambda: completed(stack) == len(keys), timeout=60, what="every upload completed")
    takeover_s = time.monotonic() - exited_at

    assert_each_upload_settled_once(stack, keys)
    wait_queues_empty(stack)
    # The released deliveries came back at once: nobody waited for a lease or a visibility timeout.
    assert takeover_s < 30
    record_result(
        "sigterm_mid_batch",
        stop_s=round(stop_s, 1),
        grace_s=grace_s,
        takeover_s=round(takeover_s, 1),
        uploads=len(keys),
    )


def test_a_file_slower_than_the_lease_is_not_taken_over(
    fault_stack: Callable[..., TestStack],
    workers: Callable[..., WorkerProcess],
    s3_proxy: S3FaultProxy,
    record_result: Callable[..., None],
) -> None:
    """The heartbeat renews the 60 s lease and visibility: a second worker, polling all along,
    never gets the message of a download that takes 75 s (its bytes trickle in all along)."""
    stack = fault_stack()
    hold_s = 75
    s3_proxy.trickle = hold_source_downloads(stack, hold_s)
    # Both workers go through the proxy, so a download by either is counted (and held).
    slow = workers("slow", stack.env, AWS_ENDPOINT_URL=s3_proxy.endpoint)
    slow.wait_started()
    key = upload_key(1)
    stack.upload(key, bundled_file("CT_small.dcm"))
    stack.wait_for(lambda: s3_proxy.held == 1, timeout=30, what="the download under way")
    started_at = time.monotonic()
    other = workers("other", stack.env, AWS_ENDPOINT_URL=s3_proxy.endpoint)
    other.wait_started()
    stack.wait_for(lambda: completed(stack) == 1, timeout=hold_s + 60, what="the slow job completed")
    took_s = time.monotonic() - started_at

    assert s3_proxy.held == 1, "a second delivery downloaded the file"
    assert_each_upload_settled_once(stack, [key])
    (job,) = stack.jobs()
    assert (job["status"], job["attempts"]) == ("Completed", 1)
    assert '"job.completed"' in slow.output() and '"job.completed"' not in other.output()
    wait_queues_empty(stack)
    record_result("slower_than_the_lease", hold_s=hold_s, lease_s=60, completed_after_s=round(took_s, 1))
