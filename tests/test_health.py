"""`python -m service health`: exit 0 while the worker loop makes progress, 1 otherwise."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest

from service.breaker import Dependency
from service.cli import main
from service.health import s3_probe, worker_probes
from service.liveness import STALE_AFTER_S, HeartbeatFile, check_health
from service.worker import LONG_POLL_S
from tests.stackfixtures import TestStack


def test_the_threshold_is_three_long_polls_and_a_margin() -> None:
    assert STALE_AFTER_S == 3 * LONG_POLL_S + 60


def test_a_fresh_heartbeat_is_healthy_a_stale_or_absent_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "beat"
    healthy, line = check_health(path)
    assert not healthy and "no heartbeat file" in line
    HeartbeatFile(path).beat()
    assert check_health(path)[0]
    old = time.time() - STALE_AFTER_S - 5
    os.utime(path, (old, old))
    healthy, line = check_health(path)
    assert not healthy and "no progress for" in line and "\n" not in line


def test_health_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "beat"
    env = {"HEARTBEAT_FILE": str(path)}
    assert main(["health"], env) == 1
    assert capsys.readouterr().err.startswith("unhealthy: ")
    path.touch()
    assert main(["health"], env) == 0
    assert capsys.readouterr().out.startswith("healthy: ")


def test_health_follows_a_real_worker(stack: TestStack, tmp_path: Path) -> None:
    path = tmp_path / "worker.heartbeat"
    env = {**stack.env, "HEARTBEAT_FILE": str(path)}
    with stack.worker(HEARTBEAT_FILE=str(path)):
        stack.wait_for(path.exists, timeout=15, what="heartbeat file")
        assert main(["health"], env) == 0
        first = path.stat().st_mtime
        stack.wait_for(lambda: path.stat().st_mtime > first, timeout=15, what="a later beat")
        assert main(["health"], env) == 0
    assert not path.exists()  # a stopped worker is not alive
    assert main(["health"], env) == 1


def test_a_worker_stuck_in_one_pass_turns_unhealthy(tmp_path: Path) -> None:
    path = tmp_path / "beat"
    HeartbeatFile(path).beat()
    stuck = time.time() - STALE_AFTER_S - 1  # as if the loop had not passed for two minutes
    os.utime(path, (stuck, stuck))
    assert main(["health"], {"HEARTBEAT_FILE": str(path)}) == 1


# -- the circuit breaker's S3 probe ----------------------------------------------------------------


class BucketsClient:
    """``head_bucket`` as S3 would answer it: each bucket named in ``faults`` raises that fault,
    the others answer 200 (through moto's server when one is given)."""

    def __init__(self, faults: dict[str, Exception], real: Any = None) -> None:
        self.faults = faults
        self.real = real
        self.asked: list[str] = []

    def head_bucket(self, Bucket: str) -> object:  # noqa: N803
        self.asked.append(Bucket)
        if Bucket in self.faults:
            raise self.faults[Bucket]
        return self.real.head_bucket(Bucket=Bucket) if self.real else {}


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    error = {"Error": {"Code": code, "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return botocore.exceptions.ClientError(error, "HeadBucket")  # type: ignore[arg-type]


UNREACHABLE = {
    "connection": botocore.exceptions.EndpointConnectionError(endpoint_url="https://s3.example"),
    "timeout": botocore.exceptions.ConnectTimeoutError(endpoint_url="https://s3.example"),
    "503": _client_error("ServiceUnavailable", 503),
    "500": _client_error("InternalError", 500),
}


@pytest.mark.parametrize("fault", list(UNREACHABLE), ids=list(UNREACHABLE))
def test_the_s3_probe_fails_when_only_the_source_bucket_does_not_answer(stack: TestStack, fault: str) -> None:
    names = stack.names
    client = BucketsClient({names.source_bucket: UNREACHABLE[fault]}, real=stack.client("s3"))
    probes = worker_probes(
        stack.pipeline_url, stack.edc_url, client, names.destination_bucket, names.source_bucket
    )
    assert probes[Dependency.S3]() is False
    assert client.asked == [names.destination_bucket, names.source_bucket]  # the destination answered
    client.faults.clear()
    assert probes[Dependency.S3]() is True  # the source answers again: the breaker may close


def test_the_s3_probe_fails_when_only_the_destination_does_not_answer_and_asks_no_further() -> None:
    client = BucketsClient({"dest": UNREACHABLE["connection"]})
    assert s3_probe(client, "dest", "uploads")() is False
    assert client.asked == ["dest"]  # one probe waits out at most one timeout


def test_a_bucket_s3_says_is_missing_or_forbidden_is_s3_answering_not_an_outage() -> None:
    # A wrong bucket fails its jobs with their own errors; holding the breaker open for it would
    # stop the worker for good.
    client = BucketsClient({"uploads": _client_error("404", 404), "dest": _client_error("403", 403)})
    assert s3_probe(client, "dest", "uploads")() is True


def test_without_source_bucket_the_probe_heads_the_destination_only() -> None:
    client = BucketsClient({})
    probes = worker_probes("postgresql://unused", "postgresql://unused", client, "dest", None)
    assert probes[Dependency.S3]() is True and client.asked == ["dest"]
    client = BucketsClient({})
    assert worker_probes("postgresql://unused", "postgresql://unused", client, "dest", "dest")[
        Dependency.S3
    ]()
    assert client.asked == ["dest"]  # the same bucket is asked once
