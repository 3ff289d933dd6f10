"""A device type is one definition: a water-level sensor defined here alone (a numeric level and a
HIGH/LOW alarm) runs end to end against a real Mosquitto, on a site's database that held the
contract's three types before: readings stored and rejected, day replies, latest, the catalogue,
hourly and daily summaries, liveness and retention, with no change to any other file.

What the service sends about it is checked here against the definition, exactly: docs/asyncapi.yaml
describes the contract's three types, so this broker is not watched against it."""

from __future__ import annotations

import csv
import gzip
import io
from datetime import datetime, timedelta, timezone

import pykka
import pytest
from conftest import Broker, MqttClient, wait_until

from actors.devices import BUILTIN_TYPES, DeviceType
from actors.devices.fields import Choice, Number
from actors.devices.kinds import Counts, Gauge
from actors.retention import RetentionActor, RetentionNow
from actors.runtime.settings import load_settings
from actors.storage.models import open_database
from actors.storage.schema import prepare
from actors.supervisor import Supervisor

WATER_LEVEL = DeviceType(
    "water_level", topic="home/waterlevel", request="home/getwaterlevel", reply="home/datawaterlevel",
    table="water_level_logs", stale_after=2,
    fields=(Number("level", 0, 500), Choice("alarm", ("HIGH", "LOW"))),
    summary=(Gauge("level"), Counts("alarm", {"HIGH": "high", "LOW": "low"})))
TYPES = BUILTIN_TYPES.adding(WATER_LEVEL)
TODAY = datetime.now(timezone.utc).date()
OLD, RECENT = (TODAY - timedelta(days=40)).isoformat(), (TODAY - timedelta(days=1)).isoformat()
READINGS = [  # (level, alarm, timestamp), sent out of order (the old day first: retention keeps the newest row)
    (44.5, "HIGH", f"{OLD}T06:30:00"), (42.0, "LOW", f"{OLD}T06:00:00"), (120.5, "HIGH", f"{RECENT}T10:15:00"),
    (80.25, "LOW", f"{RECENT}T10:45:30"), (130.0, "HIGH", f"{RECENT}T11:05:00"), (99.0, "LOW", f"{RECENT}T10:00:00")]
INVALID = {  # the payload's own fields -> what the stored rejection's reason names
    "too high": ({"level": 900, "alarm": "HIGH"}, "field 'level' must be between 0 and 500"),
    "an alarm it cannot be": ({"level": 10, "alarm": "MAYBE"}, "field 'alarm' must be one of HIGH, LOW"),
    "no level": ({"alarm": "LOW"}, "missing field 'level'"),
    "a level that is text": ({"level": "high", "alarm": "LOW"}, "field 'level' must be a number")}


@pytest.fixture
def site(tmp_path):
    """A site's broker and database: the database as the three types left it, before the fourth."""
    broker = Broker(tmp_path, watched=False)
    broker.start()
    db_path = tmp_path / "mqtt_data.db"
    db = open_database(str(db_path), 5)
    prepare(db)
    db.close()
    config = tmp_path / "site.toml"
    config.write_text(f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nclient_id = "fourth-type"\n'
                      f'[database]\npath = "{db_path}"\n[backup]\ndir = "{tmp_path}/backups"\n'
                      f'[devices]\nwater_level_stale_after = 2\n'
                      f'[retention]\nwater_level_days = 30\narchive_dir = "{tmp_path}/archive"\n')
    yield broker, db_path, config
    broker.stop()


def expected_bucket(start: str, rows: list[tuple]) -> dict:
    levels = [level for level, _, _ in rows]
    return {"start": start, "readings": len(rows),
            "level": {"min": min(levels, default=None), "max": max(levels, default=None),
                      "avg": round(sum(levels) / len(levels), 6) if levels else None},
            "high": sum(alarm == "HIGH" for _, alarm, _ in rows), "low": sum(alarm == "LOW" for _, alarm, _ in rows)}


def test_a_fourth_type_defined_in_a_test_alone_runs_end_to_end(site, tmp_path):
    broker, db_path, config = site
    settings = load_settings(config, environ={}, types=TYPES)
    assert settings.devices.stale_after("water_level") == 2 and settings.retention.days("water_level") == 30
    exits = []
    device, app, watcher = MqttClient(broker.port), MqttClient(broker.port), MqttClient(broker.port)
    supervisor = Supervisor.start(settings, exits.append)
    try:
        app.subscribe("home/status/fourth-type")
        wait_until(lambda: app.take()[1].get("state") == "online", 30, what="the service online")
        for stem in ("home/datawaterlevel", "home/datadevices"):
            app.subscribe(f"{stem}/app")
        watcher.subscribe("home/availability/water_level/#")

        for level, alarm, timestamp in READINGS:
            device.publish("home/waterlevel", {"device_id": "tank-1", "level": level, "alarm": alarm,
                                               "timestamp": timestamp})
        for body, _ in INVALID.values():
            device.publish("home/waterlevel", {"device_id": "tank-1", **body, "timestamp": f"{RECENT}T12:00:00"})
        db = open_database(str(db_path), 5, types=TYPES)
        stored = lambda sql: db.execute_sql(sql).fetchall()  # noqa: E731
        wait_until(lambda: stored("SELECT COUNT(*) FROM rejected_messages") == [(4,)]
                   and stored("SELECT COUNT(*) FROM water_level_logs") == [(6,)], what="readings stored and rejected")
        assert sorted(stored("SELECT level, alarm, timestamp FROM water_level_logs")) == sorted(READINGS)
        reasons = sorted(reason for topic, reason in stored("SELECT topic, reason FROM rejected_messages"))
        assert len(reasons) == 4 and all(any(why in r for r in reasons) for _, why in INVALID.values()), reasons
        # a reading sent again is the same reading
        device.publish("home/waterlevel", {"device_id": "tank-1", "level": 99.0, "alarm": "LOW",
                                           "timestamp": f"{RECENT}T10:00:00"})

        def ask(stem: str, body: dict) -> dict:
            app.publish(f"{stem}/app", body)
            topic, reply = app.take()
            assert topic == stem.replace("/get", "/data") + "/app"
            return reply

        recent = sorted((r for r in READINGS if r[2].startswith(RECENT)), key=lambda r: r[2])
        day = ask("home/getwaterlevel", {"device_id": "tank-1", "date": RECENT})
        assert day == {"device_id": "tank-1", "date": RECENT, "count": 4,
                       "records": [{"level": level, "alarm": alarm, "timestamp": ts} for level, alarm, ts in recent]}
        window = ask("home/getwaterlevel", {"device_id": "tank-1", "date": RECENT, "from": "10:10:00", "to": "10:50:00"})
        assert [r["timestamp"] for r in window["records"]] == [f"{RECENT}T10:15:00", f"{RECENT}T10:45:30"]
        latest = ask("home/getwaterlevel", {"device_id": "tank-1", "latest": True})
        assert latest["records"] == [{"level": 130.0, "alarm": "HIGH", "timestamp": f"{RECENT}T11:05:00"}]
        wrong = ask("home/getwaterlevel", {"device_id": "tank-1", "date": RECENT, "limt": 2})
        assert wrong["error"]["code"] == "unknown_field"

        hours = ask("home/getwaterlevel", {"device_id": "tank-1", "summary": "hour", "from_date": RECENT,
                                           "to_date": RECENT})
        assert hours["count"] == 24 and hours["buckets"] == [
            expected_bucket(f"{RECENT}T{h:02d}:00:00", [r for r in recent if r[2][11:13] == f"{h:02d}"])
            for h in range(24)]
        days = ask("home/getwaterlevel", {"device_id": "tank-1", "summary": "day", "from_date": OLD, "to_date": RECENT})
        by_day = {d: [r for r in READINGS if r[2].startswith(d)] for d in (OLD, RECENT)}
        assert days["buckets"][0] == expected_bucket(OLD, by_day[OLD])
        assert days["buckets"][-1] == expected_bucket(RECENT, by_day[RECENT])

        [entry] = ask("home/getdevices", {"type": "water_level"})["devices"]
        assert entry["readings"] == 6 and entry["first_seen"] == f"{OLD}T06:00:00"
        assert entry["latest"] == latest["records"][0] and entry["state"] in ("live", "stale")

        # liveness: silent for longer than water_level_stale_after
        states = [watcher.take(30) for _ in range(2)]
        assert [(t, r["state"]) for t, r in states] == [("home/availability/water_level/tank-1", "live"),
                                                       ("home/availability/water_level/tank-1", "stale")]

        # retention: the old day archived and deleted, its summary kept, the catalogue counting what is left
        pykka.ActorRegistry.get_by_class(RetentionActor)[0].tell(RetentionNow())
        wait_until(lambda: stored(f"SELECT COUNT(*) FROM water_level_logs WHERE date = '{OLD}'") == [(0,)],
                   what="the old day deleted")
        archive = tmp_path / "archive" / "water_level_logs" / OLD[:4] / f"water_level_logs-{OLD}.csv.gz"
        archived = list(csv.DictReader(io.StringIO(gzip.decompress(archive.read_bytes()).decode())))
        assert sorted((float(r["level"]), r["alarm"]) for r in archived) == [(42.0, "LOW"), (44.5, "HIGH")]
        assert ask("home/getwaterlevel", {"device_id": "tank-1", "summary": "day", "from_date": OLD,
                                          "to_date": OLD})["buckets"] == [expected_bucket(OLD, by_day[OLD])]
        assert ask("home/getdevices", {"type": "water_level"})["devices"][0]["readings"] == 4
        assert ask("home/getwaterlevel", {"device_id": "tank-1", "date": OLD})["count"] == 0
        db.close()
    finally:
        for client in (device, app, watcher):
            client.close()
        supervisor.stop()
    assert exits == []
