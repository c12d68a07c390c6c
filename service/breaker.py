"""The circuit breaker: while a dependency does not answer, the worker stops receiving.

An outage of the pipeline database, the EDC replica or S3 would otherwise fail every message the
worker pulls, and each failure spends one of the message's deliveries (SQS counts receives, and
after ``maxReceiveCount`` the message goes to the DLQ). A job that hits a fault of a dependency
asks the health probe whether the dependency answers at all; only if it does not, the breaker
opens: the worker stops receiving, parks the messages it holds (their visibility is still renewed),
probes the dependency with a growing interval, and when a probe succeeds closes again and runs the
parked messages in place, with no new delivery. A fault the probe cannot confirm (the dependency
answers) is the message's own and is retried as usual, so a poison message still reaches the DLQ.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import structlog

log = structlog.get_logger()


class Dependency(StrEnum):
    """What the worker cannot do without."""

    PIPELINE_DATABASE = "pipeline_database"
    EDC_REPLICA = "edc_replica"
    S3 = "s3"


# One probe: True when the dependency answers. It must be quick (short timeouts, no retries).
Probe = Callable[[], bool]


@dataclass(slots=True)
class _Open:
    since: float
    next_probe: float
    interval_s: float
    probes: int = 0


class CircuitBreaker:
    """Open/closed per dependency. Thread-safe: jobs trip it, the worker loop probes it."""

    def __init__(
        self,
        probes: Mapping[Dependency, Probe],
        *,
        first_probe_s: float = 2.0,
        max_probe_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probes = dict(probes)
        self._first_s = first_probe_s
        self._max_s = max_probe_interval_s
        self._clock = clock
        self._open: dict[Dependency, _Open] = {}
        self._lock = threading.Lock()

    def reachable(self, dependency: Dependency) -> bool:
        """Ask the dependency now (a job that just failed uses this to tell outage from fault)."""
        probe = self._probes.get(dependency)
        return True if probe is None else _safe(probe)

    def trip(self, dependency: Dependency) -> None:
        """Open for ``dependency`` (idempotent)."""
        with self._lock:
            if dependency in self._open:
                return
            now = self._clock()
            self._open[dependency] = _Open(
                since=now, next_probe=now + self._first_s, interval_s=self._first_s
            )
        log.warning("breaker.opened", dependency=str(dependency), detail="receiving paused")

    @property
    def is_open(self) -> bool:
        with self._lock:
            return bool(self._open)

    def is_closed_for(self, dependency: Dependency) -> bool:
        with self._lock:
            return dependency not in self._open

    def seconds_to_next_probe(self) -> float | None:
        with self._lock:
            if not self._open:
                return None
            return max(0.0, min(o.next_probe for o in self._open.values()) - self._clock())

    def probe_due(self) -> list[Dependency]:
        """Probe every open dependency whose turn has come; return the ones that closed."""
        with self._lock:
            now = self._clock()
            due = [d for d, o in self._open.items() if o.next_probe <= now]
        closed = []
        for dependency in due:
            healthy = self.reachable(dependency)
            with self._lock:
                state = self._open.get(dependency)
                if state is None:
                    continue
                state.probes += 1
                if healthy:
                    del self._open[dependency]
                    closed.append(dependency)
                    outage_s = round(self._clock() - state.since, 1)
                else:
                    state.interval_s = min(self._max_s, state.interval_s * 2)
                    state.next_probe = self._clock() + state.interval_s
            if healthy:
                log.info("breaker.closed", dependency=str(dependency), outage_s=outage_s, probes=state.probes)
            elif state.probes == 1 or state.interval_s >= self._max_s:
                log.warning(
                    "breaker.still_open",
                    dependency=str(dependency),
                    probes=state.probes,
                    next_probe_s=state.interval_s,
                )
        return closed


def _safe(probe: Probe) -> bool:
    try:
        return bool(probe())
    except Exception:  # noqa: BLE001 - a probe that raises is a dependency that does not answer
        return False
