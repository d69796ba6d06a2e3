"""Calendar periods of budgets and periodic caps, in PROGRAM_TIME_ZONE (SPEC §6, §14)."""

from datetime import UTC, datetime

import pytest

from rules.budgets import period_end, period_key, period_start


@pytest.mark.parametrize(
    ("zone", "moment", "period", "key"),
    [
        ("UTC", datetime(2026, 12, 7, 0, 0, tzinfo=UTC), "day", "day:2026-12-07"),
        ("UTC", datetime(2026, 12, 6, 23, 59, tzinfo=UTC), "week", "week:2026-11-30"),
        ("UTC", datetime(2026, 12, 7, 0, 0, tzinfo=UTC), "week", "week:2026-12-07"),
        ("America/New_York", datetime(2026, 12, 7, 4, 59, tzinfo=UTC), "week", "week:2026-11-30"),  # Sun 23:59
        ("America/New_York", datetime(2026, 12, 7, 5, 0, tzinfo=UTC), "week", "week:2026-12-07"),  # Mon 00:00
        ("Asia/Tokyo", datetime(2026, 11, 30, 15, 0, tzinfo=UTC), "month", "month:2026-12"),  # Dec 1 00:00
        ("Asia/Tokyo", datetime(2026, 11, 30, 14, 59, tzinfo=UTC), "month", "month:2026-11"),
        ("UTC", datetime(2026, 12, 7, 0, 0, tzinfo=UTC), None, "all"),
    ],
)
def test_period_keys_follow_the_program_time_zone(settings, zone, moment, period, key):
    settings.PROGRAM_TIME_ZONE = zone
    assert period_key(period, moment) == key


def test_a_day_across_a_daylight_saving_change_starts_and_ends_at_local_midnight(settings):
    settings.PROGRAM_TIME_ZONE = "Europe/Berlin"
    moment = datetime(2026, 3, 29, 12, 0, tzinfo=UTC)  # clocks go forward at 02:00 local

    start, end = period_start("day", moment), period_end("day", moment)

    assert start.astimezone(UTC) == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # 00:00 CET
    assert end.astimezone(UTC) == datetime(2026, 3, 29, 22, 0, tzinfo=UTC)  # 00:00 CEST, 23 hours later


def test_a_month_ends_at_the_next_month_s_first_midnight(settings):
    settings.PROGRAM_TIME_ZONE = "UTC"
    assert period_end("month", datetime(2026, 12, 31, 23, 0, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert period_end("week", datetime(2026, 12, 9, tzinfo=UTC)) == datetime(2026, 12, 14, tzinfo=UTC)
