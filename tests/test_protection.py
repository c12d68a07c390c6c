"""ECS task scale-in protection: a local HTTP server plays the ECS agent's endpoint."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from structlog.testing import capture_logs

from service import protection as protection_module
from service.local.samples import bundled_file
from service.protection import TaskProtection
from tests.stackfixtures import TestStack

CT_KEY = "subjecteventcrffile/1/101/CT Scan/v1.dcm"
TASK_ARN = "arn:aws:ecs:us-east-1:000000000000:task/edc/0123456789abcdef"


@dataclass
class FakeAgent:
    """Records every request; answers like the ECS agent (``answer``: ok, blocked, error, garbage)."""

    url: str = ""
    calls: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    answer: str = "ok"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def puts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for method, _, body in self.calls if method == "PUT"]


@pytest.fixture
def agent() -> Iterator[FakeAgent]:
    fake = FakeAgent()

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with fake.lock:
                fake.calls.append(("PUT", self.path, body))
            status, answer = (
                200,
                {
                    "protection": {
                        "ProtectionEnabled": body["ProtectionEnabled"],
                        "ExpirationDate": "2026-12-02T20:00:00Z",
                        "TaskArn": TASK_ARN,
                    }
                },
            )
            if fake.answer == "blocked":
                status, answer = 200, {"failure": {"Arn": TASK_ARN, "Reason": "DEPLOYMENT_BLOCKED"}}
            elif fake.answer == "error":
                status, answer = 500, {"error": {"Arn": TASK_ARN, "Code": "ServerException", "Message": "x"}}
            raw = b"not json" if fake.answer == "garbage" else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/api/agent-id"
    yield fake
    server.shutdown()
    server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def protection(agent: FakeAgent, clock: Clock, **kwargs: Any) -> TaskProtection:
    return TaskProtection(agent.url, expires_minutes=10, clock=clock, idle_s=10, retry_s=30, **kwargs)


def test_protection_is_set_once_while_busy_renewed_at_half_time_and_cleared_after_idle(
    agent: FakeAgent,
) -> None:
    clock = Clock()
    guard = protection(agent, clock)
    guard.update(busy=True)
    assert agent.calls == [
        ("PUT", "/api/agent-id/task-protection/v1/state", {"ProtectionEnabled": True, "ExpiresInMinutes": 10})
    ]
    for _ in range(50):  # a steady stream of jobs: no call per job
        clock.now += 5
        guard.update(busy=True)
        guard.update(busy=False)
    assert len(agent.puts()) == 1 and guard.protected
    clock.now = 1000 + 301  # half of the 10 minutes: a long job's protection is renewed
    guard.update(busy=True)
    assert len(agent.puts()) == 2
    guard.update(busy=False)  # idle: cleared only after 10 s without a job
    clock.now += 9
    guard.update(busy=False)
    assert len(agent.puts()) == 2
    clock.now += 2
    guard.update(busy=False)
    assert agent.puts()[-1] == {"ProtectionEnabled": False}
    assert not guard.protected
    clock.now += 100
    guard.update(busy=False)  # idle and clear: nothing more to say
    assert len(agent.puts()) == 3


def test_a_failing_agent_is_logged_once_retried_later_and_never_raises(agent: FakeAgent) -> None:
    clock = Clock()
    guard = protection(agent, clock)
    for answer in ("error", "garbage"):
        agent.answer = answer
        with capture_logs() as logs:
            for _ in range(5):
                guard.update(busy=True)
                clock.now += 1
        assert len(agent.puts()) <= 2  # not on every pass: after retry_s
        failures = [e for e in logs if e["event"] == "protection.failed"]
        assert len(failures) == 1
        clock.now += 30
        agent.calls.clear()
    agent.answer = "ok"
    with capture_logs() as logs:
        guard.update(busy=True)
    assert [e["event"] for e in logs] == ["protection.recovered", "protection.set"]
    assert guard.protected


def test_an_unreachable_agent_does_not_hold_the_loop() -> None:
    clock = Clock()
    guard = TaskProtection("http://127.0.0.1:9", expires_minutes=10, clock=clock)
    with capture_logs() as logs:
        guard.update(busy=True)
        guard.update(busy=True)
    assert [e["event"] for e in logs] == ["protection.failed"]
    assert logs[0]["reason"] == "ConnectionError"
    assert not guard.protected and not guard.receiving_blocked


def test_deployment_blocked_pauses_receiving_for_a_while(agent: FakeAgent) -> None:
    clock = Clock()
    agent.answer = "blocked"
    guard = protection(agent, clock, blocked_pause_s=60)
    with capture_logs() as logs:
        guard.update(busy=True)
        clock.now += 30
        guard.update(busy=True)  # no new call within the pause
    assert len(agent.puts()) == 1
    assert [e["event"] for e in logs] == ["protection.deployment_blocked"]
    assert guard.receiving_blocked
    clock.now += 31
    assert not guard.receiving_blocked
    guard.update(busy=True)  # asked again after the pause; still blocked, logged once only
    assert len(agent.puts()) == 2 and guard.receiving_blocked


def test_a_worker_on_ecs_protects_its_task_while_a_job_runs(stack: TestStack, agent: FakeAgent) -> None:
    with stack.worker(ECS_AGENT_URI=agent.url, TASK_PROTECTION_MINUTES="30"):
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
        assert agent.puts() == [{"ProtectionEnabled": True, "ExpiresInMinutes": 30}]
    assert job["status"] == "Completed"
    assert agent.puts()[-1] == {"ProtectionEnabled": False}  # cleared at the stop at the latest
    assert len(agent.puts()) == 2


def test_a_blocked_deployment_never_fails_the_job_and_pauses_receiving(
    stack: TestStack, agent: FakeAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protection_module, "BLOCKED_PAUSE_S", 2.0)  # moto's s3:TestEvent blocks first
    agent.answer = "blocked"
    with stack.worker(ECS_AGENT_URI=agent.url):
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        (job,) = stack.wait_settled(1)
        stack.wait_for(lambda: '"worker.receiving_paused"' in stack.log.getvalue(), what="paused")
    assert job["status"] == "Completed"
    log = [json.loads(line) for line in stack.log.getvalue().splitlines()]
    assert sum(e.get("event") == "protection.deployment_blocked" for e in log) == 1  # logged once
    paused = [e for e in log if e.get("event") == "worker.receiving_paused"]
    assert paused and all(e["deployment_blocked"] is True for e in paused)
    assert any(e.get("event") == "worker.receiving_resumed" for e in log)  # after the pause


def test_without_ecs_agent_uri_no_protection_is_asked(stack: TestStack, agent: FakeAgent) -> None:
    with stack.worker():
        stack.upload(CT_KEY, bundled_file("CT_small.dcm"))
        stack.wait_settled(1)
    assert agent.calls == []
    assert '"protection.' not in stack.log.getvalue()
