"""The site's calendar (settings: site.timezone): the `date` of a reading, the days a day request
asks for, a request's time window and the hours and days of summaries are read in it.

Without a zone a timestamp is read as the device wrote it, its offset ignored: the original
program's way, so that nothing changes for a site until its operator sets one. With a zone, a
timestamp that carries an offset (`Z`, `+00:00`) is first converted to the site's wall-clock time,
and one without is taken to be in it already."""

from __future__ import annotations

from datetime import datetime, timezone, tzinfo
from operator import itemgetter
from zoneinfo import ZoneInfo


class SiteTime:
    def __init__(self, zone: str = ""):
        self.name = zone
        self.zone: tzinfo | None = ZoneInfo(zone) if zone else None
        # a summary's hour of a stored timestamp: in the hot loop of a burst, so a slice without a zone
        self.hour_of = itemgetter(slice(0, 13)) if self.zone is None else lambda timestamp: self.local(timestamp)[:13]

    def local(self, timestamp: str) -> str:
        """A stored (canonical) timestamp as the site's wall-clock time: as it is without a zone or
        without an offset, else converted and written without one."""
        if self.zone is None or ("+" not in timestamp[19:] and "-" not in timestamp[19:]):
            return timestamp
        return datetime.fromisoformat(timestamp).astimezone(self.zone).replace(tzinfo=None).isoformat()

    def date_of(self, moment: datetime) -> str:
        """A parsed timestamp's date in the site's calendar."""
        if self.zone is not None and moment.tzinfo is not None:
            moment = moment.astimezone(self.zone)
        return moment.date().isoformat()

    def aware(self, moment: datetime) -> datetime:
        """A parsed timestamp as an absolute time: one without an offset is the site's (UTC without a zone)."""
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=self.zone or timezone.utc)


UNZONED = SiteTime()  # no site.timezone: timestamps read as the devices wrote them
