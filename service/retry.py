"""tenacity policies for single I/O calls (the first of two retry layers; SQS is the second).

Only faults that can pass are retried: throttling, 5xx, timeouts and connection errors. Attempts
and total time are bounded so a message never outlives its visibility lease inside one call.
``set_wait_enabled(False)`` removes the waits, for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import botocore.exceptions
import psycopg2
import requests
import structlog
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
    wait_none,
)

log = structlog.get_logger()

F = TypeVar("F", bound=Callable[..., Any])

_THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
        "KMS.ThrottlingException",
    }
)
_CONNECTION_ERRORS = (
    botocore.exceptions.ConnectionError,  # includes EndpointConnectionError, ConnectTimeout
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ReadTimeoutError,
    ConnectionError,
    TimeoutError,
)

_waits_enabled = True


def set_wait_enabled(enabled: bool) -> None:
    """Turn the backoff waits off (tests) or on again; attempts stay bounded either way."""
    global _waits_enabled
    _waits_enabled = enabled


def is_transient_aws_error(exc: BaseException) -> bool:
    """True for AWS errors that another attempt may fix."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return error.get("Code", "") in _THROTTLING_CODES or status >= 500 or status == 429
    return False


def is_transient_db_error(exc: BaseException) -> bool:
    """True for PostgreSQL errors that another attempt may fix (connection lost, failover)."""
    return isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)


def _wait(retry_state: RetryCallState) -> float:
    if not _waits_enabled:
        return wait_none()(retry_state)
    return wait_exponential_jitter(initial=0.2, max=10.0, jitter=0.5)(retry_state)


def _log_retry(retry_state: RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    log.warning(
        "retry.scheduled",
        call=getattr(retry_state.fn, "__qualname__", "call"),
        attempt=retry_state.attempt_number,
        error_type=type(exc).__name__ if exc else None,
    )


def _policy(predicate: Callable[[BaseException], bool], attempts: int, seconds: float) -> Callable[[F], F]:
    return retry(  # type: ignore[return-value]
        retry=retry_if_exception(predicate),
        stop=stop_after_attempt(attempts) | stop_after_delay(seconds),
        wait=_wait,
        before_sleep=_log_retry,
        reraise=True,
    )


aws_retry: Callable[[F], F] = _policy(is_transient_aws_error, attempts=5, seconds=60)
"""Decorator for one AWS call: up to 5 attempts within 60 s, on throttling/5xx/connection errors."""

db_retry: Callable[[F], F] = _policy(is_transient_db_error, attempts=4, seconds=30)
"""Decorator for one database connect/transaction: up to 4 attempts within 30 s."""


class TransientHttpError(Exception):
    """An HTTP answer another attempt may change (429 or 5xx); ``status`` is the answer's code."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def is_transient_http_error(exc: BaseException) -> bool:
    """True for a 429/5xx answer, a connection error or a timeout of a plain HTTP call."""
    return isinstance(exc, TransientHttpError | requests.ConnectionError | requests.Timeout)


http_retry: Callable[[F], F] = _policy(is_transient_http_error, attempts=4, seconds=30)
"""Decorator for one HTTP call (a Slack webhook): up to 4 attempts within 30 s, on 429/5xx/connection."""
