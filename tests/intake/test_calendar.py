from __future__ import annotations

import datetime as dt

from intake.calendar import WorkingCalendar

MSK = dt.timezone(dt.timedelta(hours=3))


def test_weekends_and_russian_public_holidays_are_not_working_days() -> None:
    calendar = WorkingCalendar("RU", "Europe/Moscow")
    assert calendar.is_working_day(dt.date(2026, 11, 25))  # a Wednesday
    assert not calendar.is_working_day(dt.date(2026, 11, 28))  # Saturday
    assert not calendar.is_working_day(dt.date(2026, 11, 4))  # Unity Day, a Wednesday
    assert not calendar.is_working_day(dt.date(2026, 1, 5))  # New Year holidays, a Monday


def test_configured_exceptions_win_over_the_public_calendar() -> None:
    calendar = WorkingCalendar(
        "RU",
        "Europe/Moscow",
        extra_holidays=[dt.date(2026, 11, 25)],
        extra_working_days=[dt.date(2026, 11, 28)],
    )
    assert not calendar.is_working_day(dt.date(2026, 11, 25))
    assert calendar.is_working_day(dt.date(2026, 11, 28))


def test_fourteen_working_days_skip_weekends_and_holidays() -> None:
    calendar = WorkingCalendar("RU", "Europe/Moscow")
    resolved = dt.datetime(2026, 10, 28, 15, 0, tzinfo=MSK)  # Wednesday
    # 29,30 Oct; 2,3,5,6 Nov (4 Nov is Unity Day); 9-13 Nov; 16,17,18 Nov.
    assert calendar.add_working_days(resolved, 14) == dt.datetime(2026, 11, 18, 15, 0, tzinfo=MSK)


def test_the_local_day_decides_not_the_utc_day() -> None:
    calendar = WorkingCalendar("RU", "Europe/Moscow")
    # 22:30 UTC on Friday is 01:30 on Saturday in Moscow: one working day later is
    # Monday 01:30 in Moscow, which is still Sunday in UTC.
    friday_night_utc = dt.datetime(2026, 11, 27, 22, 30, tzinfo=dt.UTC)
    assert calendar.add_working_days(friday_night_utc, 1) == dt.datetime(
        2026, 11, 29, 22, 30, tzinfo=dt.UTC
    )
