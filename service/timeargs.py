"""``--since`` for the operator commands: a duration back from now (``7d``, ``24h``, ``90m``) or a
UTC date or time (``2026-11-30``, ``2026-11-30T08:00``)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^(\d{1,6})([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime) -> datetime:
    """The instant ``text`` names, relative to ``now``. Raises ``ValueError`` with a one-line reason."""
    value = text.strip()
    match = _DURATION.match(value)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"expected a duration like 7d, 24h, 90m or a date like 2026-11-30, got {text!r}"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def since_type(clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> Callable[[str], datetime]:
    """An argparse ``type=`` for ``--since`` (a bad value exits 2 with one line, as argparse does)."""

    def convert(text: str) -> datetime:
        try:
            return parse_since(text, clock())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def parse_duration(text: str) -> timedelta:
    """A length of time such as ``90m`` or ``6h``. Raises ``ValueError`` with a one-line reason."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"expected a duration like 30m, 6h or 2d, got {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def duration_type(text: str) -> timedelta:
    """An argparse ``type=`` for a duration option (``--older-than``); a bad value exits 2."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
