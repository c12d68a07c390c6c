"""The retry policies: the number of attempts, what is retried, and the log line for each retry."""

from __future__ import annotations

import io
import json

import psycopg2
import pytest

from service.logs import configure_logging
from service.retry import db_retry


@pytest.fixture
def captured_log() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    return stream


class Flaky:
    """Fails with ``errors`` in order, then answers."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "answer"


def _retries(log: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == "retry.scheduled"]


def test_a_call_that_succeeds_is_called_once_and_logs_nothing(captured_log: io.StringIO) -> None:
    flaky = Flaky()
    assert db_retry(flaky)() == "answer"
    assert flaky.calls == 1 and _retries(captured_log) == []


def test_transient_failures_are_retried_and_each_retry_is_logged_with_its_attempt(
    captured_log: io.StringIO,
) -> None:
    lost = psycopg2.OperationalError("connection lost")
    flaky = Flaky(lost, lost)
    assert db_retry(flaky)() == "answer"
    assert flaky.calls == 3
    assert [(r["attempt"], r["error_type"]) for r in _retries(captured_log)] == [
        (1, "OperationalError"),
        (2, "OperationalError"),
    ]


def test_attempts_are_bounded_and_the_last_error_is_raised(captured_log: io.StringIO) -> None:
    flaky = Flaky(*(psycopg2.OperationalError(f"down {n}") for n in range(10)))
    with pytest.raises(psycopg2.OperationalError, match="down 3"):
        db_retry(flaky)()
    assert flaky.calls == 4  # db_retry: up to 4 attempts
    assert [r["attempt"] for r in _retries(captured_log)] == [1, 2, 3]


def test_an_error_another_attempt_cannot_fix_is_raised_at_once(captured_log: io.StringIO) -> None:
    flaky = Flaky(psycopg2.errors.UniqueViolation("duplicate"))
    with pytest.raises(psycopg2.errors.UniqueViolation):
        db_retry(flaky)()
    assert flaky.calls == 1 and _retries(captured_log) == []


def test_a_first_attempt_that_outlasts_the_time_bound_is_not_retried(
    captured_log: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.retry as retry

    real = retry.time.monotonic
    readings = [0.0, 31.0]  # db_retry: within 30 s; the first attempt took 31

    monkeypatch.setattr(retry.time, "monotonic", lambda: readings.pop(0) if readings else real())
    flaky = Flaky(psycopg2.OperationalError("slow and lost"))
    with pytest.raises(psycopg2.OperationalError):
        db_retry(flaky)()
    assert flaky.calls == 1 and _retries(captured_log) == []
