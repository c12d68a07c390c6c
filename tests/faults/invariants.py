"""What every fault scenario must leave behind, checked from the outside."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tests.stackfixtures import TestStack

TERMINAL = ("Completed", "Failed")


def assert_each_upload_settled_once(stack: TestStack, keys: Sequence[str]) -> None:
    """Every upload has exactly one first job, it is terminal, and at most one quarantine object
    exists per job (the object name carries the job's pipeline_file_id)."""
    jobs = stack.jobs()
    first = Counter(j["source_key"] for j in jobs if j["reprocess_of"] is None)
    assert sorted(first) == sorted(keys), f"jobs for {sorted(first)}, uploads {sorted(keys)}"
    assert set(first.values()) == {1}, f"more than one job for an upload: {first}"
    unsettled = [(j["id"], j["status"]) for j in jobs if j["status"] not in TERMINAL]
    assert not unsettled, f"jobs not terminal: {unsettled}"
    objects = stack.quarantine_keys()
    destinations = Counter(j["destination_key"] for j in jobs if j["status"] == "Completed")
    assert sorted(destinations) == objects, f"quarantine {objects} vs completed jobs {destinations}"
    assert set(destinations.values()) <= {1}, f"two jobs claim one object: {destinations}"


def completed(stack: TestStack) -> int:
    return sum(j["status"] == "Completed" for j in stack.jobs())


def wait_queues_empty(stack: TestStack, timeout: float = 30) -> None:
    """Every delivery settled: nothing in the queue (visible or in flight) nor in its DLQ."""
    stack.wait_for(
        lambda: stack.queue_depth() == 0 and stack.queue_depth("PIPELINE_DLQ_URL") == 0,
        timeout,
        "the queue and its DLQ empty",
    )
