"""Device clocks that cannot be right: a clock that was reset sends 1970 or 2000, a wrong one next
year. Such a reading is set aside with a reason starting with "clock", so that it never becomes a
device's latest reading or fills a day of 1970."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from actors.protocol.sitetime import UNZONED, SiteTime


class ClockCheck:
    def __init__(self, earliest_date: str, max_ahead: float, site: SiteTime = UNZONED):
        """`max_ahead`: seconds a timestamp may be ahead of the reading's arrival (0: no check);
        `site`: the calendar readings are dated in, and the time of a timestamp without an offset."""
        self.earliest_date = earliest_date
        self.max_ahead = max_ahead
        self.site = site

    def at(self, received_at: str):
        """The check of readings that arrived at `received_at` (UTC, as utc_now() writes it): a
        function of a row's (timestamp, date) that returns the problem, or None."""
        arrived = datetime.fromisoformat(received_at).replace(tzinfo=timezone.utc)
        latest = arrived + timedelta(seconds=self.max_ahead)
        surely_fine = (latest - timedelta(days=2)).date().isoformat()  # no zone moves a date that far

        def problem(timestamp: str, date: str) -> str | None:
            if date < self.earliest_date:
                return (f"clock: timestamp {timestamp} is before limits.earliest_date {self.earliest_date} "
                        "(was the device's clock reset?)")
            if not self.max_ahead or date <= surely_fine:
                return None
            ahead = (self.site.aware(datetime.fromisoformat(timestamp)) - arrived).total_seconds()
            if ahead > self.max_ahead:
                return (f"clock: timestamp {timestamp} is {ahead:.0f} s ahead of its arrival at {received_at} UTC, "
                        f"more than limits.max_clock_ahead ({self.max_ahead:g} s)")
            return None
        return problem
