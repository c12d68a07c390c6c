"""The service's commands as separate processes, as ECS runs them: ``python -m service ...``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def command_env(stack_env: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """The process environment: this one's PATH and the like, the stack's settings on top."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PIPELINE_", "EDC_"))}
    return {**keep, **stack_env, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1", **overrides}


def run_command(
    args: Sequence[str], stack_env: Mapping[str, str], timeout: float = 120, **overrides: str
) -> subprocess.CompletedProcess[str]:
    """Run one command to its end and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=REPO,
        env=command_env(stack_env, **overrides),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class WorkerProcess:
    """``python -m service worker`` in its own process, its output in ``log_path``."""

    def __init__(self, name: str, stack_env: Mapping[str, str], log_dir: Path, **overrides: str) -> None:
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        self._log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "worker"],
            cwd=REPO,
            env=command_env(stack_env, **overrides),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_started(self, timeout: float = 60) -> None:
        """Block until the worker logs that it is receiving (or fail with its output)."""
        deadline = time.monotonic() + timeout
        while '"worker.started"' not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} did not start:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; safe on an exited process."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.reap()

    def reap(self) -> None:
        """Wait for a stopping process (killing it after 30 s) and close its log."""
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
