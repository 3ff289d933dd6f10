"""Start-up's schema step beside other instances of the service: on one SQLite file while another
instance commits readings, and on one empty PostgreSQL database that several instances start on
at the same moment. Either must wait its turn, never fail."""

import sqlite3
import threading
from types import SimpleNamespace

import pytest

from actors.devices import BUILTIN_TYPES
from actors.protocol.messages import Rejection, fingerprint
from actors.storage.models import connect_database
from actors.storage.schema import SCHEMA_VERSION, current_version, prepare
from actors.storage.summaries import Summaries


def database(path="", url=""):
    return connect_database(SimpleNamespace(path=path, url=url, busy_timeout=10.0, checkpoint_mb=16), connections=8)


def test_start_up_beside_an_instance_that_is_committing(tmp_path, monkeypatch):
    """The other instance commits a reading just after this one has read the schema version: it
    must wait for this start-up's transaction (a read that then writes would fail at once)."""
    path = tmp_path / "shared.db"
    db = database(path=str(path))
    prepare(db)
    db.execute_sql("DELETE FROM schema_version")  # as a first release left it: the version to write
    db.close()
    other = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    outcome = []

    def read_then_other_commits(database):
        version = current_version(database)
        try:
            other.execute("INSERT INTO temperature_logs (device_id, temperature, humidity, status, timestamp, "
                          "date, created_at) VALUES ('t1', 1, 50, 'LOW', '2026-05-01T00:00:00', '2026-05-01', '')")
            outcome.append("committed")
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))
        return version

    monkeypatch.setattr("actors.storage.schema.current_version", read_then_other_commits)
    prepare(db)
    # The first read only tells that there is something to write; the one that decides what is
    # inside the schema step's transaction, and the other instance waited for it (here: gave up).
    assert outcome == ["committed", "database is locked"]
    assert db.execute_sql("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    db.close()
    other.close()


def test_a_current_database_is_only_read_so_another_connections_write_lock_does_not_hold_it_up(tmp_path):
    path = tmp_path / "locked.db"
    db = database(path=str(path))
    prepare(db)
    db.close()
    operator = sqlite3.connect(path, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 session holding the write lock
    db = database(path=str(path))
    db.execute_sql("PRAGMA busy_timeout = 0")  # any wait for the lock would fail at once
    prepare(db)
    assert current_version(db) == SCHEMA_VERSION
    operator.execute("ROLLBACK")
    db.close()
    operator.close()


def test_instances_starting_together_on_an_empty_postgresql_database(pg_url):
    db = database(url=pg_url)
    errors = []

    def start_up():
        try:
            prepare(db)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=start_up) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert db.execute_sql("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    db.close()


def upgrade_from_version_3(db):
    """A database as version 3 left it, with readings, upgraded: the catalogue and the rollups are
    built from its rows, as if they had just been stored."""
    prepare(db)
    for table in ("devices", "temperature_hourly", "power_hourly", "fingerprint_hourly"):
        db.execute_sql(f"DROP TABLE {table}")
    db.execute_sql("UPDATE schema_version SET version = 3")
    p = db.param
    for ts, stored in (("2026-05-01T10:00:00", "2026-05-01 10:00:01"), ("2026-05-01T10:30:00", "2026-05-02 00:00:00"),
                       ("2026-04-30T23:00:00", "2026-05-01 09:00:00")):
        db.execute_sql("INSERT INTO temperature_logs (device_id, temperature, humidity, status, timestamp, date, "
                       f"created_at) VALUES ('t1', 20.5, 50, 'HIGH', {p}, {p}, {p})", (ts, ts[:10], stored))
    db.execute_sql("INSERT INTO power_status_logs (device_id, ebstatus, dgstatus, timestamp, date, created_at) "
                   "VALUES ('p1', 'ON', '', '2026-05-01T06:00:00', '2026-05-01', '2026-05-01 06:00:00')")
    prepare(db)
    assert current_version(db) == SCHEMA_VERSION
    assert db.execute_sql("SELECT type, device_id, readings, first_seen, last_seen, received_at FROM devices "
                          "ORDER BY type").fetchall() == [
        ("power", "p1", 1, "2026-05-01T06:00:00", "2026-05-01T06:00:00", "2026-05-01 06:00:00"),
        ("temperature", "t1", 3, "2026-04-30T23:00:00", "2026-05-01T10:30:00", "2026-05-02 00:00:00")]
    assert db.execute_sql("SELECT hour, readings, temperature_sum, high FROM temperature_hourly ORDER BY hour"
                          ).fetchall() == [("2026-04-30T23", 1, 20.5e6, 1), ("2026-05-01T10", 2, 41e6, 2)]
    assert db.execute_sql("SELECT hour, eb_first_us, eb_on_us, eb_last FROM power_hourly").fetchall() == [
        ("2026-05-01T06", 0, 3600 * 10**6, "ON")]


def upgrade_from_version_4(db):
    """A database as version 4 left it: each power hour holds its whole list of events, rejections
    have no fingerprint. The upgrade keeps each source's last event's timestamp, and fingerprints
    the rejections kept already, so that a retained bad reading delivered again is not kept twice."""
    prepare(db)
    p = db.param
    for column in ("eb_last_at", "dg_last_at"):
        db.execute_sql(f"ALTER TABLE power_hourly DROP COLUMN {column}")
    db.execute_sql("ALTER TABLE power_hourly ADD COLUMN events TEXT")
    db.execute_sql("INSERT INTO power_hourly (device_id, hour, readings, eb_first_us, eb_on_us, eb_last, dg_first_us, "
                   "dg_on_us, dg_last, events) VALUES ('p1', '2026-05-01T06', 3, 0, 1800000000, 'OFF', 600000000, 0, "
                   "'OFF', "
                   f"{p})", ('[["2026-05-01T06:00:00","ON",""],["2026-05-01T06:10:00","","OFF"],'
                             '["2026-05-01T06:30:00","OFF",""]]',))
    db.execute_sql("DROP INDEX rejected_messages_fingerprint")
    db.execute_sql("ALTER TABLE rejected_messages DROP COLUMN fingerprint")
    db.execute_sql(f"INSERT INTO rejected_messages (topic, payload, reason, received_at) VALUES ('home/power', {p}, "
                   "'not JSON', '2026-05-01 06:00:00')", (b"garbage",))
    db.execute_sql("UPDATE schema_version SET version = 4")
    prepare(db)
    assert current_version(db) == SCHEMA_VERSION
    assert db.execute_sql("SELECT readings, eb_on_us, eb_last, eb_last_at, dg_last, dg_last_at FROM power_hourly"
                          ).fetchall() == [(3, 1800000000, "OFF", "2026-05-01T06:30:00", "OFF", "2026-05-01T06:10:00")]
    assert "events" not in {c.name for c in db.get_columns("power_hourly")}
    expected = fingerprint(Rejection("home/power", b"garbage", "", "")).hex()
    assert db.execute_sql("SELECT fingerprint FROM rejected_messages").fetchall() == [(expected,)]


def upgrade_from_version_5(db):
    """A database as version 5 left it: fingerprint_hourly without `readings`. The upgrade counts
    each row's passes and fails, so that summaries read `readings` from every type's rollup alike."""
    prepare(db)
    db.execute_sql("ALTER TABLE fingerprint_hourly DROP COLUMN readings")
    db.execute_sql("INSERT INTO fingerprint_hourly (device_id, hour, user_id, passes, fails) VALUES "
                   "('f1', '2026-05-01T06', 'u1', 2, 1), ('f1', '2026-05-01T06', 'u2', 0, 4)")
    db.execute_sql("UPDATE schema_version SET version = 5")
    prepare(db)
    assert current_version(db) == SCHEMA_VERSION
    assert db.execute_sql("SELECT user_id, readings FROM fingerprint_hourly ORDER BY user_id").fetchall() == [
        ("u1", 3), ("u2", 4)]
    [bucket] = Summaries(db).buckets(BUILTIN_TYPES["fingerprint"], "f1", "day", ["2026-05-01"])
    assert bucket == {"start": "2026-05-01", "readings": 7, "pass": 2, "fail": 5, "users": 2}


@pytest.fixture(params=["sqlite", "postgresql"])
def older_database(request, tmp_path):
    """A database to make old and upgrade: a SQLite file, then a PostgreSQL database."""
    db = database(path=str(tmp_path / "old.db")) if request.param == "sqlite" else \
        database(url=request.getfixturevalue("pg_url"))
    yield db
    db.close()


@pytest.mark.parametrize("upgrade", [upgrade_from_version_3, upgrade_from_version_4, upgrade_from_version_5],
                         ids=["from 3", "from 4", "from 5"])
def test_an_older_version_is_upgraded_with_what_it_lacks_built_from_its_rows(older_database, upgrade):
    upgrade(older_database)
