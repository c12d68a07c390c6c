"""`python -m service health`: exit 0 while the worker loop makes progress, 1 otherwise."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from service.cli import main
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
