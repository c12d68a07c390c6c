"""ECS task scale-in protection while the worker runs jobs (the ECS agent's endpoint).

Autoscaling scales in by stopping tasks; a stopped task's running jobs get ``SHUTDOWN_GRACE_S``
and are then released to another task, so a long job would start again from nothing. While this
worker runs jobs it asks the ECS agent (``PUT $ECS_AGENT_URI/task-protection/v1/state``) to
protect the task, and clears the protection once it has been idle for a while:

- **debounced**: set when the first job starts, renewed only when half of
  ``TASK_PROTECTION_MINUTES`` has passed (a job longer than the protection stays protected), and
  cleared after ``idle_s`` without a running job (a steady stream of short jobs makes no calls);
- **never fails a job**: the call has short timeouts; a failure (agent unreachable, an error
  answer) is logged once per episode and tried again after ``retry_s``; jobs go on either way;
- **DEPLOYMENT_BLOCKED**: ECS refuses protection while a deployment is replacing the task. The
  worker takes that as "this task is on its way out": it stops receiving new messages for
  ``blocked_pause_s`` (running jobs finish; nothing is released), so an idle task is stopped
  without interrupting anything, then receives again (a deployment that stays blocked still gets
  work from this task, a batch per pause).

Only ``service.worker`` calls ``update``; the worker runs without protection when ECS_AGENT_URI
is unset (outside ECS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests
import structlog

log = structlog.get_logger()

PROTECTION_PATH = "/task-protection/v1/state"
DEPLOYMENT_BLOCKED = "DEPLOYMENT_BLOCKED"
# How long a DEPLOYMENT_BLOCKED answer stops new receives.
BLOCKED_PAUSE_S = 60.0
_TIMEOUT_S = (1.0, 2.0)  # connect, read: the agent is local; a slow answer must not hold the loop


class TaskProtection:
    """Sets and clears the task's scale-in protection from the worker loop's passes."""

    def __init__(
        self,
        agent_uri: str,
        *,
        expires_minutes: int,
        session: requests.Session | None = None,
        idle_s: float = 10.0,
        retry_s: float = 30.0,
        blocked_pause_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = agent_uri.rstrip("/") + PROTECTION_PATH
        self._minutes = expires_minutes
        self._session = session or requests.Session()
        self._idle_s = idle_s
        self._retry_s = retry_s
        self._blocked_pause_s = BLOCKED_PAUSE_S if blocked_pause_s is None else blocked_pause_s
        self._clock = clock
        self._protected_until: float | None = None  # monotonic; None: not protected (as we know)
        self._idle_since: float | None = None
        self._next_try = 0.0
        self._blocked_until = 0.0
        self._failing: str | None = None  # the failure already logged, until a call succeeds

    @property
    def receiving_blocked(self) -> bool:
        """True for ``blocked_pause_s`` after a DEPLOYMENT_BLOCKED answer."""
        return self._clock() < self._blocked_until

    @property
    def protected(self) -> bool:
        return self._protected_until is not None and self._clock() < self._protected_until

    def update(self, *, busy: bool) -> None:
        """Called on every pass of the loop with whether jobs are running."""
        now = self._clock()
        if busy:
            self._idle_since = None
            renew_at = None if self._protected_until is None else self._protected_until - self._minutes * 30
            if (renew_at is None or now >= renew_at) and now >= self._next_try:
                self._put(enabled=True, now=now)
            return
        if self._protected_until is None:
            return
        if self._idle_since is None:
            self._idle_since = now
        if now - self._idle_since >= self._idle_s and now >= self._next_try:
            self._put(enabled=False, now=now)

    def release(self) -> None:
        """At shutdown: clear a protection this worker set (best effort)."""
        if self._protected_until is not None:
            self._put(enabled=False, now=self._clock())

    def _put(self, *, enabled: bool, now: float) -> None:
        body: dict[str, Any] = {"ProtectionEnabled": enabled}
        if enabled:
            body["ExpiresInMinutes"] = self._minutes
        try:
            response = self._session.put(self._url, json=body, timeout=_TIMEOUT_S)
            answer = response.json()
        except (requests.RequestException, ValueError) as exc:
            self._failed(f"{type(exc).__name__}", now, status=None)
            return
        refusal = _refusal(answer)
        if refusal is None and response.ok:
            self._succeeded(enabled, now)
        elif refusal == DEPLOYMENT_BLOCKED:
            self._blocked(now)
        else:
            self._failed(refusal or f"HTTP {response.status_code}", now, status=response.status_code)

    def _succeeded(self, enabled: bool, now: float) -> None:
        if self._failing is not None:
            log.info("protection.recovered", after=self._failing)
            self._failing = None
        self._blocked_until = 0.0
        if enabled:
            if self._protected_until is None:
                log.info("protection.set", expires_in_minutes=self._minutes)
            self._protected_until = now + self._minutes * 60
        else:
            log.info("protection.cleared")
            self._protected_until = None
            self._idle_since = None

    def _blocked(self, now: float) -> None:
        if self._failing != DEPLOYMENT_BLOCKED:
            log.warning(
                "protection.deployment_blocked",
                detail="ECS refuses protection while a deployment replaces this task: "
                "pausing new receives, running jobs go on",
                pause_s=self._blocked_pause_s,
            )
            self._failing = DEPLOYMENT_BLOCKED
        self._blocked_until = now + self._blocked_pause_s
        self._next_try = now + self._blocked_pause_s

    def _failed(self, reason: str, now: float, *, status: int | None) -> None:
        if self._failing != reason:
            log.warning("protection.failed", reason=reason, status=status, retry_s=self._retry_s)
            self._failing = reason
        self._next_try = now + self._retry_s


def _refusal(answer: object) -> str | None:
    """The agent's refusal code: ``{"error": {"Code": ...}}`` or ``{"failure": {"Reason": ...}}``."""
    if not isinstance(answer, dict):
        return "unexpected answer"
    for key, field in (("error", "Code"), ("failure", "Reason")):
        detail = answer.get(key)
        if isinstance(detail, dict) and detail:
            return str(detail.get(field) or key)
    if "protection" not in answer:
        return "unexpected answer"
    return None
