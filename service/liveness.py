"""Liveness: the worker loop touches a heartbeat file; ``python -m service health`` reads its age.

The container's health check (Docker ``HEALTHCHECK``, the ECS task definition's ``healthCheck``)
runs ``health`` in the worker's container: exit 0 while the file was touched within
``STALE_AFTER_S``, exit 1 with one line otherwise (absent, unreadable or stale). A pass of the loop
lasts at most one long poll (20 s) plus a receive's retries, so three long polls and a margin
(120 s) means the loop is stuck, not slow. Before the loop's first pass (start-up: migrations
check, bucket check) and after the drain the file is absent or ageing: the health check's start
period covers the first, ECS's stop the second.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from service.logs import describe_exception

log = structlog.get_logger()

# Three of the worker's 20 s long polls and a minute of margin (the worker is not imported: the
# health check runs every 30 s and should stay light).
STALE_AFTER_S = 3 * 20 + 60
# While busy the loop passes about once a second: touch the file at most this often.
_TOUCH_EVERY_S = 5.0


@dataclass(slots=True)
class HeartbeatFile:
    """Touched by ``beat()`` on every pass of the worker loop (at most every 5 s)."""

    path: Path
    _last: float = field(default=float("-inf"), init=False)
    _failed_logged: bool = field(default=False, init=False)

    def beat(self) -> None:
        """Touch the file; a failure is logged once and never stops the loop (health then fails)."""
        now = time.monotonic()
        if now - self._last < _TOUCH_EVERY_S:
            return
        try:
            self.path.touch()
            os.utime(self.path)
        except OSError as exc:
            if not self._failed_logged:
                log.error("worker.heartbeat_file_failed", path=str(self.path), **describe_exception(exc))
                self._failed_logged = True
            return
        self._last = now
        self._failed_logged = False

    def remove(self) -> None:
        """At a clean stop: a stopped worker is not alive."""
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            log.warning("worker.heartbeat_file_not_removed", path=str(self.path))


def check_health(
    path: Path, stale_after_s: float = STALE_AFTER_S, now: float | None = None
) -> tuple[bool, str]:
    """``(healthy, one line)`` for the heartbeat file at ``path``."""
    try:
        modified = path.stat().st_mtime
    except FileNotFoundError:
        return False, f"unhealthy: no heartbeat file {path} (the worker loop is not running)"
    except OSError as exc:
        return False, f"unhealthy: cannot read heartbeat file {path} ({type(exc).__name__})"
    age = (time.time() if now is None else now) - modified
    if age > stale_after_s:
        limit = int(stale_after_s)
        return False, f"unhealthy: worker loop made no progress for {int(age)} s (limit {limit} s)"
    return True, f"healthy: worker loop passed {max(0, int(age))} s ago"
