"""The site's calendar (site.timezone): dates, wall-clock times and the clock check, with and
without a zone. End to end (days, windows, summaries across midnight and DST): test_summaries.py."""

from datetime import datetime

import orjson
import pytest

from actors.devices import BUILTIN_TYPES
from actors.protocol.clock import ClockCheck
from actors.protocol.sitetime import UNZONED, SiteTime
from actors.runtime.settings import load_settings

KOLKATA = SiteTime("Asia/Kolkata")


def reading(timestamp: str) -> bytes:
    return orjson.dumps({"device_id": "t1", "temperature": 20.0, "humidity": 50.0, "status": "LOW",
                         "timestamp": timestamp})


@pytest.mark.parametrize("sent, unzoned, kolkata", [
    ("2026-01-21T18:30:00Z", "2026-01-21", "2026-01-22"),        # UTC, after the site's midnight
    ("2026-01-21T23:59:59+05:30", "2026-01-21", "2026-01-21"),   # the site's own offset
    ("2026-01-22T01:00:00-08:00", "2026-01-22", "2026-01-22"),   # another offset: 14:30 at the site
    ("2026-01-21T23:00:00", "2026-01-21", "2026-01-21"),         # no offset: the site's time already
])
def test_a_readings_date_is_the_sites_for_timestamps_with_an_offset(sent, unzoned, kolkata):
    temperature = BUILTIN_TYPES["temperature"]
    assert temperature.parse(reading(sent))[-1] == unzoned
    assert temperature.parse(reading(sent), UNZONED)[-1] == unzoned
    assert temperature.parse(reading(sent), KOLKATA)[-1] == kolkata


def test_a_timestamp_in_the_sites_wall_clock_time():
    assert KOLKATA.local("2026-01-21T18:30:00+00:00") == "2026-01-22T00:00:00"
    assert KOLKATA.local("2026-01-21T18:30:00.250000+00:00") == "2026-01-22T00:00:00.250000"
    assert KOLKATA.local("2026-01-22T09:00:00") == "2026-01-22T09:00:00"
    assert KOLKATA.hour_of("2026-01-21T18:30:00+00:00") == "2026-01-22T00"
    assert UNZONED.local("2026-01-21T18:30:00+00:00") == "2026-01-21T18:30:00+00:00"  # as the device wrote it
    assert UNZONED.hour_of("2026-01-21T18:30:00+00:00") == "2026-01-21T18"
    new_york = SiteTime("America/New_York")  # the hour DST repeats: both passes read 01:xx
    assert new_york.local("2026-11-01T05:30:00+00:00") == new_york.local("2026-11-01T06:30:00+00:00")[:11] + "01:30:00"


def test_the_clock_check_takes_a_timestamp_without_an_offset_as_the_sites_time():
    arrived = "2026-01-22 04:30:00"  # UTC: 10:00 at the site
    at_site = ClockCheck("2001-01-01", 600, KOLKATA).at(arrived)
    assert at_site("2026-01-22T10:05:00", "2026-01-22") is None  # 5 minutes ahead, not 5 h 35 min
    assert at_site("2026-01-22T10:15:00", "2026-01-22").startswith("clock: timestamp 2026-01-22T10:15:00 is 900 s")
    assert at_site("2026-01-22T04:35:00+00:00", "2026-01-22") is None  # an offset says it all
    in_utc = ClockCheck("2001-01-01", 600).at(arrived)  # no zone: read as UTC, as before
    assert in_utc("2026-01-22T10:05:00", "2026-01-22").startswith("clock: timestamp 2026-01-22T10:05:00 is 20100 s")


def test_unset_keeps_the_old_behaviour_and_a_name_is_checked():
    assert load_settings(environ={}).site.timezone == ""
    assert load_settings(environ={"SITE_TIMEZONE": "Asia/Kolkata"}).site.timezone == "Asia/Kolkata"
    assert SiteTime("").zone is None and SiteTime("UTC").local("2026-01-22T05:00:00+05:30") == "2026-01-21T23:30:00"
    assert datetime.fromisoformat(KOLKATA.local("2026-03-08T12:00:00-05:00")).hour == 22
