"""Deletes of finished messages, sent in batches instead of one call per message.

A worker whose jobs finish one at a time would otherwise make one ``DeleteMessageBatch`` call per
file (~2 ms of CPU each in botocore, and a request billed). A finished message waits here at most
``linger_s`` (far inside its visibility lease, which the heartbeat renewed while it ran) for others
to share its call, and goes at once when ten are waiting or the worker has nothing running. A
worker killed meanwhile loses only the deletes: those messages come back after their lease, find
their job finished, and are deleted then (a duplicate delivery is harmless).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from service.sqs import Message

BATCH = 10  # SQS's most per DeleteMessageBatch
LINGER_S = 1.0


class AckBuffer:
    """Messages to delete, flushed by the worker's loop. Thread-safe."""

    def __init__(
        self,
        delete: Callable[[Sequence[Message]], object],
        *,
        linger_s: float = LINGER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._delete = delete
        self._linger_s = linger_s
        self._clock = clock
        self._waiting: list[Message] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()

    def add(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        with self._lock:
            if not self._waiting:
                self._oldest = self._clock()
            self._waiting.extend(messages)

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)

    def flush(self, *, force: bool = False) -> int:
        """Delete what waits when ``force``, when a batch is full, or when the oldest has waited
        ``linger_s``; return how many were sent. Raises what the
        delete raises (the messages are then dropped from here: they come back to the queue and
        are finished again)."""
        with self._lock:
            if not self._waiting:
                return 0
            due = self._oldest is not None and self._clock() - self._oldest >= self._linger_s
            if not (force or due or len(self._waiting) >= BATCH):
                return 0
            sending, self._waiting, self._oldest = self._waiting, [], None
        self._delete(sending)
        return len(sending)
