"""Working days of the desk: weekends, the country's public holidays, configured exceptions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from zoneinfo import ZoneInfo

import holidays


class WorkingCalendar:
    def __init__(
        self,
        country: str,
        timezone: str,
        *,
        extra_holidays: Iterable[dt.date] = (),
        extra_working_days: Iterable[dt.date] = (),
    ) -> None:
        self.zone = ZoneInfo(timezone)
        # Years are filled in lazily by the library as dates are asked about.
        self._public = holidays.country_holidays(country)
        self._extra_holidays = frozenset(extra_holidays)
        self._extra_working_days = frozenset(extra_working_days)

    def is_working_day(self, day: dt.date) -> bool:
        if day in self._extra_holidays:
            return False
        if day in self._extra_working_days:
            return True
        return day.weekday() < 5 and day not in self._public

    def add_working_days(self, start: dt.datetime, days: int) -> dt.datetime:
        """The moment ``days`` whole working days after ``start`` (same local time of day).

        The day ``start`` falls on does not count, so a ticket resolved on Friday evening
        with a limit of one working day is due on Monday evening.
        """
        local = start.astimezone(self.zone)
        day = local.date()
        remaining = days
        while remaining > 0:
            day += dt.timedelta(days=1)
            if self.is_working_day(day):
                remaining -= 1
        due = dt.datetime.combine(day, local.timetz()).replace(tzinfo=self.zone)
        return due.astimezone(dt.UTC)
