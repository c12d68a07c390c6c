from datetime import UTC, datetime, timedelta

import pytest

from service.timeargs import parse_since

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", NOW - timedelta(days=7)),
        ("24h", NOW - timedelta(hours=24)),
        ("90m", NOW - timedelta(minutes=90)),
        ("2w", NOW - timedelta(weeks=2)),
        ("2026-11-30", datetime(2026, 11, 30, tzinfo=UTC)),
        ("2026-11-30T08:00", datetime(2026, 11, 30, 8, 0, tzinfo=UTC)),
        ("2026-11-30T08:00+01:00", datetime(2026, 11, 30, 7, 0, tzinfo=UTC)),
    ],
)
def test_since_accepts_durations_and_dates(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "7", "d7", "-1d", "yesterday", "7 days"])
def test_since_refuses_anything_else_with_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration") as info:
        parse_since(text, NOW)
    assert "\n" not in str(info.value)
