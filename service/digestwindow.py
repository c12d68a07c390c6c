"""Digest windows and delivery claims: what a digest covers, and which channels have sent it.

Windows of one scope (a pipeline code, or ``*`` for all) follow one another: a new window starts
where the scope's latest one ended, and ends at ``now - 1 min`` floored to 15 minutes (the minute
lets the last jobs of a slot settle; the floor makes two runs in one slot find the same window).
The first window of a scope covers the 24 hours before its end. A new window shorter than the
run's minimum (``DIGEST_MIN_WINDOW_MINUTES``) is not opened: the run sends nothing and leaves the
span to the next run, so a scheduler firing twice around a slot boundary (06:00:30, then 06:01:10)
does not send a second, 15-minute digest. A PostgreSQL advisory lock per scope makes two
concurrent runs agree on one window instead of both creating one.

Each (window, channel) has one delivery claim: ``sending`` while a run sends, then ``sent`` or
``failed``. A run sends on a channel only after it inserted the claim, so a scheduler that fires
twice sends once. A window recorded by a run that died before claiming any channel was received
by nobody: the next run extends it to its own end rather than start after it. A ``sending`` claim
older than ``STALE_SENDING`` is a sender that crashed mid-send and may be taken over; that is the
one way a channel can receive a window twice (the crashed send may have gone out before the
crash). Database errors propagate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.db import Database

SCOPE_ALL = "*"
SLOT = timedelta(minutes=15)
SETTLE = timedelta(minutes=1)
FIRST_WINDOW = timedelta(hours=24)
STALE_SENDING = timedelta(minutes=15)
_LOCK_NAMESPACE = "edc-digest:"  # advisory lock key: hashtext(namespace || scope)


@dataclass(frozen=True, slots=True)
class DigestWindow:
    """One window of a scope: ``[start, end)``. ``id`` is None for an ad-hoc or dry-run window,
    which is never recorded."""

    scope: str
    start: datetime
    end: datetime
    id: int | None = None


class ClaimResult(StrEnum):
    """What a claim attempt found."""

    CLAIMED = "claimed"  # this run sends on the channel
    SENT = "already sent"  # another run sent it
    SENDING = "being sent by another run"  # a live claim elsewhere
    FAILED = "failed earlier (digest --retry-failed resends it)"


@dataclass(frozen=True, slots=True)
class ShortSpan:
    """The span ``[start, end)`` since the scope's last window is under ``minimum``: nothing is
    opened or recorded, and the next run's window starts at ``start`` as before."""

    scope: str
    start: datetime
    end: datetime
    minimum: timedelta


def window_end(now: datetime) -> datetime:
    """``now - 1 min`` floored to the 15-minute slot, in UTC."""
    moment = (now - SETTLE).astimezone(UTC)
    floored = moment.replace(second=0, microsecond=0)
    return floored - timedelta(minutes=floored.minute % int(SLOT.total_seconds() // 60))


def scope_of(pipeline_code: str | None) -> str:
    """The window scope of a run: its pipeline, or all pipelines."""
    return pipeline_code or SCOPE_ALL


class DigestWindows:
    """The ``digest_window`` and ``digest_delivery`` tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def next_window(
        self, scope: str, now: datetime, minimum: timedelta = timedelta(0)
    ) -> DigestWindow | ShortSpan:
        """The window a run at ``now`` covers, without recording it (``--dry-run``)."""
        with self._db.transaction() as cur:
            window = self._next(cur, scope, now)
            latest = _latest(cur, scope)
            if window.id is None and latest is not None and not _has_claims(cur, latest.id or 0):
                return DigestWindow(scope, latest.start, window.end)  # as open_window would extend it
            if window.id is None and latest is not None and window.end - window.start < minimum:
                return ShortSpan(scope, window.start, window.end, minimum)
            return window

    def open_window(
        self, scope: str, now: datetime, minimum: timedelta = timedelta(0)
    ) -> DigestWindow | ShortSpan:
        """The scope's window for ``now``, recorded: a new one starting at the latest one's end,
        or the latest one itself when a run in the same slot (or a clock behind it) made it.
        A new window shorter than ``minimum`` is not recorded: ``ShortSpan`` says so."""
        with self._db.transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK_NAMESPACE + scope,))
            window = self._next(cur, scope, now)
            if window.id is not None:
                return window
            latest = _latest(cur, scope)
            if latest is not None and latest.id is not None and not _has_claims(cur, latest.id):
                # A run that recorded its window and then died before claiming any channel: nobody
                # received that window, so it grows to the new end instead of being skipped (it met
                # the minimum when it was opened, so the grown one does too).
                cur.execute(
                    "UPDATE pipeline.digest_window SET window_end = %s WHERE id = %s", (window.end, latest.id)
                )
                return DigestWindow(scope, latest.start, window.end, latest.id)
            if latest is not None and window.end - window.start < minimum:
                # Too soon after the last window (a second fire just past a slot boundary): leave
                # the span to the next run, whose window still starts at latest.end (no gap).
                return ShortSpan(scope, window.start, window.end, minimum)
            cur.execute(
                "INSERT INTO pipeline.digest_window (scope, window_start, window_end, created_at)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (scope, window.start, window.end, now),
            )
            row = cur.fetchone()
            assert row is not None
            return DigestWindow(scope, window.start, window.end, int(row[0]))

    def latest(self, scope: str) -> DigestWindow | None:
        """The scope's most recent recorded window, if any."""
        with self._db.transaction() as cur:
            return _latest(cur, scope)

    def claim(self, window: DigestWindow, channel: str, now: datetime, *, retry: bool = False) -> ClaimResult:
        """Take the delivery claim of ``channel`` for ``window``.

        A first claim inserts it; a stale ``sending`` claim is taken over; with ``retry``, a
        ``failed`` claim is taken again. Anything else reports what holds the channel.
        """
        assert window.id is not None
        takeable = ("failed", "sending") if retry else ("sending",)
        with self._db.transaction() as cur:
            if not retry:
                cur.execute(
                    "INSERT INTO pipeline.digest_delivery (digest_window_id, channel, status, attempted_at)"
                    " VALUES (%s, %s, 'sending', %s) ON CONFLICT DO NOTHING",
                    (window.id, channel, now),
                )
                if cur.rowcount == 1:
                    return ClaimResult.CLAIMED
            cur.execute(
                "UPDATE pipeline.digest_delivery SET status = 'sending', attempts = attempts + 1,"
                " attempted_at = %(now)s, error_code = NULL, error_text = NULL"
                " WHERE digest_window_id = %(window)s AND channel = %(channel)s"
                " AND status = ANY(%(takeable)s)"
                " AND (status = 'failed' OR attempted_at < %(stale)s)",
                {
                    "now": now,
                    "window": window.id,
                    "channel": channel,
                    "takeable": list(takeable),
                    "stale": now - STALE_SENDING,
                },
            )
            if cur.rowcount == 1:
                return ClaimResult.CLAIMED
            cur.execute(
                "SELECT status FROM pipeline.digest_delivery WHERE digest_window_id = %s AND channel = %s",
                (window.id, channel),
            )
            row = cur.fetchone()
        status = row[0] if row else None
        return {"sent": ClaimResult.SENT, "failed": ClaimResult.FAILED}.get(status or "", ClaimResult.SENDING)

    def failed_channels(self, window: DigestWindow) -> list[str]:
        """The channels whose last attempt for ``window`` failed."""
        with self._db.transaction() as cur:
            cur.execute(
                "SELECT channel FROM pipeline.digest_delivery WHERE digest_window_id = %s"
                " AND status = 'failed' ORDER BY channel",
                (window.id,),
            )
            return [str(r[0]) for r in cur.fetchall()]

    def mark_sent(self, window: DigestWindow, channel: str, now: datetime) -> None:
        """The channel delivered the window."""
        self._settle(window, channel, "status = 'sent', sent_at = %s", (now,))

    def mark_failed(self, window: DigestWindow, channel: str, code: str, text: str) -> None:
        """The channel could not deliver; ``code`` and ``text`` are ours (no payload, no PHI)."""
        self._settle(
            window, channel, "status = 'failed', error_code = %s, error_text = %s", (code, text[:500])
        )

    def _settle(self, window: DigestWindow, channel: str, assignments: str, params: tuple[Any, ...]) -> None:
        with self._db.transaction() as cur:
            cur.execute(
                f"UPDATE pipeline.digest_delivery SET {assignments}"
                " WHERE digest_window_id = %s AND channel = %s AND status = 'sending'",
                (*params, window.id, channel),
            )

    @staticmethod
    def _next(cur: Any, scope: str, now: datetime) -> DigestWindow:
        end = window_end(now)
        latest = _latest(cur, scope)
        if latest is None:
            return DigestWindow(scope, end - FIRST_WINDOW, end)
        if end <= latest.end:
            return latest  # same slot (or the clock went back): that window, never an overlap
        return DigestWindow(scope, latest.end, end)


def _latest(cur: Any, scope: str) -> DigestWindow | None:
    cur.execute(
        "SELECT id, window_start, window_end FROM pipeline.digest_window"
        " WHERE scope = %s ORDER BY window_end DESC LIMIT 1",
        (scope,),
    )
    row = cur.fetchone()
    return DigestWindow(scope, row[1], row[2], int(row[0])) if row else None


def _has_claims(cur: Any, window_id: int) -> bool:
    cur.execute("SELECT 1 FROM pipeline.digest_delivery WHERE digest_window_id = %s LIMIT 1", (window_id,))
    return cur.fetchone() is not None
