"""The fault suite's stacks: the test stack with more EDC records, worker processes, results."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.processes import WorkerProcess
from tests.stackfixtures import TestStack, make_stack

RESULTS_DIR = Path(__file__).parent / "results"  # measured timings; gitignored
UPLOADS = 12  # EDC records 2001.. for the suite's uploads


def upload_key(n: int) -> str:
    """Key of the n-th fault-suite upload (EDC row 2000 + n, participant 1, CT Scan)."""
    return f"subjecteventcrffile/1/101/CT Scan/fault{n}.dcm"


def _add_edc_records(stack: TestStack) -> None:
    values = ", ".join(f"({2000 + n}, 101, 1, 'fault{n}', 1)" for n in range(1, UPLOADS + 1))
    stack.query(f"INSERT INTO edc.subjecteventcrffile VALUES {values}", url=stack.edc_url)


@pytest.fixture
def fault_stack(moto_endpoint: str, postgres_admin_url: str) -> Callable[..., TestStack]:
    """``fault_stack(max_receive_count=N)``: a fresh stack whose EDC knows the suite's uploads."""

    def make(max_receive_count: int = 5) -> TestStack:
        stack = make_stack(moto_endpoint, postgres_admin_url, max_receive_count=max_receive_count)
        _add_edc_records(stack)
        return stack

    return make


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``workers(name, env, **overrides)`` starts a worker process; all are stopped afterwards."""
    started: list[WorkerProcess] = []

    def start(name: str, env: dict[str, str], **overrides: str) -> WorkerProcess:
        worker = WorkerProcess(name, env, tmp_path, **overrides)
        started.append(worker)
        return worker

    yield start
    for worker in started:  # all at once: each may be in a 20 s long poll
        if worker.process.poll() is None:
            worker.signal(signal.SIGTERM)
    for worker in started:
        worker.reap()


@pytest.fixture
def record_result(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Write a scenario's measurements to ``results/<scenario>.json`` for docs/RELIABILITY.md."""

    def record(scenario: str, **measured: Any) -> None:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"{scenario}.json"
        path.write_text(json.dumps({"test": request.node.name, **measured}, indent=2) + "\n")

    return record
