"""system.py --redate against a real SQLite file and PostgreSQL: readings stored before the site had a time zone
(and one stored again after it got one) moved to the site's calendar, the summaries built again
exactly as the raw rows give them in that zone, and a refusal that changes nothing once retention
has deleted readings the rollups still count."""

import dataclasses
import subprocess
import sys
from datetime import datetime

import pytest
import reference
from conftest import ROOT, FakePeer

from actors.devices import BUILTIN_TYPES
from actors.protocol.messages import Committed, WriteBatch
from actors.protocol.sitetime import UNZONED, SiteTime
from actors.runtime.peers import WRITER, Peers
from actors.runtime.settings import load_settings
from actors.storage.models import connect_database
from actors.storage.redate import Incomplete, redate
from actors.storage.summaries import Summaries, bucket_starts
from actors.writer import WriterActor

KOLKATA = SiteTime("Asia/Kolkata")
STAMPS = [f"2026-04-01T{h:02d}:{m:02d}:00Z" for h in range(16, 22) for m in (5, 35)]  # 21:35 to 03:05 at the site


def store(settings, site, batches):
    """Each (type, payloads) stored by a writer of the given calendar, as the service would."""
    db = connect_database(settings, 2)
    peers, link = Peers(), FakePeer()
    peers.register("link", link)
    writer = WriterActor.start(WRITER, db, settings, peers, None, site=site)
    peers.register(WRITER, writer)
    try:
        for i, (kind, payloads) in enumerate(batches):
            rows = tuple(BUILTIN_TYPES[kind].parse(p.encode(), site) for p in payloads)
            writer.tell(WriteBatch(kind, rows, (), (i,)))
            assert link.next() == Committed((i,))
    finally:
        writer.stop()
        db.close()


def readings():
    temps = [f'{{"device_id": "t1", "temperature": {20 + i}, "humidity": 50, "status": "LOW", "timestamp": "{ts}"}}'
             for i, ts in enumerate(STAMPS)]
    power = [f'{{"device_id": "p1", "status": "{s}", "timestamp": "{ts}"}}'
             for s, ts in zip(("EB_ON", "DG_ON", "EB_OFF", "DG_OFF") * 3, STAMPS)]
    doors = [f'{{"device_id": "d1", "user_id": "u{i % 3}", "authStatus": "PASS", "timestamp": "{ts}"}}'
             for i, ts in enumerate(STAMPS)]
    return [("temperature", temps), ("power", power), ("fingerprint", doors)]


@pytest.fixture(params=["sqlite", "postgresql"])
def site(request, tmp_path):
    """The database settings of a site whose readings were stored without a zone, then one reading
    again with the zone set."""
    database = load_settings(environ={}).database
    if request.param == "sqlite":
        settings = dataclasses.replace(database, path=str(tmp_path / "mqtt_data.db"))
    else:
        settings = dataclasses.replace(database, url=request.getfixturevalue("pg_url"))
    store(settings, UNZONED, readings())
    store(settings, KOLKATA, [("temperature", [readings()[0][1][-1]])])  # a device resending its last reading
    return settings


@pytest.fixture
def db(site):
    database = connect_database(site, 1)
    database.connect()
    yield database
    database.close()


def rows(db, sql):
    return [tuple(row) for row in db.execute_sql(sql).fetchall()]


def test_redate_moves_readings_to_the_sites_calendar_and_summaries_follow(db):
    assert rows(db, "SELECT COUNT(*) FROM temperature_logs") == [(13,)]  # the copy: another date, another row
    done = redate(db, KOLKATA)
    # 18:35Z to 21:35Z are past the site's midnight (18:30Z); the copy of 21:35Z is deleted instead
    assert done == {"temperature": (6, 1), "power": (7, 0), "fingerprint": (7, 0)}
    for table in ("temperature_logs", "power_status_logs", "fingerprint_logs"):
        assert all(KOLKATA.local(ts)[:10] == date for ts, date in rows(db, f"SELECT timestamp, date FROM {table}"))
    assert rows(db, "SELECT readings FROM devices WHERE device_id = 't1'") == [(12,)]
    summaries = Summaries(db, clock=lambda: datetime(2026, 4, 3).astimezone(), site=KOLKATA)
    days = ("2026-04-01", "2026-04-02")
    temps = [(t, h, s, KOLKATA.local(ts)) for t, h, s, ts in
             rows(db, "SELECT temperature, humidity, status, timestamp FROM temperature_logs")]
    events = [(eb, dg, KOLKATA.local(ts)) for eb, dg, ts in
              rows(db, "SELECT ebstatus, dgstatus, timestamp FROM power_status_logs")]
    taps = [(u, a, KOLKATA.local(ts)) for u, a, ts in rows(db, "SELECT user_id, auth_status, timestamp "
                                                                 "FROM fingerprint_logs")]
    for kind in ("hour", "day"):
        starts = bucket_starts(kind, *days)
        assert summaries.buckets(BUILTIN_TYPES["temperature"], "t1", kind, starts) == \
            reference.temperature(kind, temps, *days)
        assert summaries.buckets(BUILTIN_TYPES["power"], "p1", kind, starts) == reference.power(kind, events, *days)
        assert summaries.buckets(BUILTIN_TYPES["fingerprint"], "d1", kind, starts) == \
            reference.fingerprint(kind, taps, *days)
    assert redate(db, KOLKATA) == {"temperature": (0, 0), "power": (0, 0), "fingerprint": (0, 0)}


def test_redate_refuses_once_retention_has_deleted_readings_and_changes_nothing(db):
    with db.atomic():
        db.execute_sql("DELETE FROM power_status_logs WHERE id = 1")  # as retention does: the rollups keep it
    before = [rows(db, f"SELECT * FROM {t} ORDER BY id") for t in ("temperature_logs", "temperature_hourly")]
    with pytest.raises(Incomplete, match="power_hourly counts 12 power readings, power_status_logs holds 11"):
        redate(db, KOLKATA)
    assert [rows(db, f"SELECT * FROM {t} ORDER BY id") for t in ("temperature_logs", "temperature_hourly")] == before


def test_the_redate_command_says_what_it_did(site):
    where = {"DATABASE_URL": site.url} if site.url else {"DATABASE_PATH": site.path}
    env = {**where, "SITE_TIMEZONE": "Asia/Kolkata", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "system.py", "--redate"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "redate: temperature: 6 readings moved to another date, 1 stored twice deleted" in done.stdout
    again = subprocess.run([sys.executable, "system.py", "--redate"], cwd=ROOT, env={"DATABASE_PATH": "x.db"},
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "start the service once first" in again.stdout
