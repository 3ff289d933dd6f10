"""Retention against a real SQLite file: the retention actor archives expired days, the real
writer deletes them; and the WAL checkpoint that keeps the log bounded under constant reads."""

import csv
import dataclasses
import gzip
import shutil
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from conftest import FakePeer, wait_until

from actors.devices import BUILTIN_TYPES
from actors.protocol.messages import Committed, WriteBatch
from actors.retention import RetentionActor, RetentionNow, archive_day, exclusive_pass
from actors.runtime.peers import RETENTION, WRITER, Peers
from actors.runtime.settings import load_settings
from actors.storage.models import connect_database, open_database
from actors.storage.readgate import ReadGate
from actors.storage.summaries import Summaries, bucket_starts
from actors.writer import WriterActor

TODAY = datetime.now(timezone.utc).date()


def day(n: int) -> str:
    return (TODAY - timedelta(days=n)).isoformat()


class Service:
    """The writer and the retention actor over one database, as the supervisor wires them."""

    def __init__(self, tmp_path, **retention):
        defaults = load_settings(environ={})
        self.db_path = tmp_path / "mqtt_data.db"
        self.archive = tmp_path / "archive"
        self.database = dataclasses.replace(defaults.database, path=str(self.db_path))
        days = {k: retention.pop(f"{k}_days") for k in BUILTIN_TYPES if f"{k}_days" in retention}  # per type
        self.retention = dataclasses.replace(defaults.retention, archive_dir=str(self.archive), **retention,
                                             by_type={**defaults.retention.by_type, **days})
        self.db = open_database(str(self.db_path), 5)
        self.peers, self.link, self.gate = Peers(), FakePeer(), ReadGate()
        self.peers.register("link", self.link)
        self.writer = WriterActor.start(WRITER, self.db, self.database, self.peers, None, self.gate)
        self.peers.register("writer", self.writer)

    def store(self, device: str, rows) -> None:
        self.writer.tell(WriteBatch(device, tuple(rows), (), (1,)))
        assert self.link.next() == Committed((1,))

    def start_retention(self):
        """Started, then told its first pass, as the supervisor does."""
        self.housekept = {}  # when the latest pass ended (a skipped one too)
        ref = RetentionActor.start(RETENTION, self.db, self.retention, self.peers, None, self.gate, self.housekept)
        ref.tell(RetentionNow())
        return ref

    def rows(self, sql):
        con = sqlite3.connect(self.db_path)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def archived(self, table, date):
        path = self.archive / table / date[:4] / f"{table}-{date}.csv.gz"
        with gzip.open(path, "rt", newline="") as f:
            return list(csv.reader(f))


@pytest.fixture
def retention(tmp_path):
    made = Service(tmp_path, temperature_days=5, power_days=5, rejected_days=5, batch_rows=3)
    made.retention_ref = None
    yield made
    for ref in (made.retention_ref, made.writer):
        if ref is not None:
            ref.stop()


def temperature(device, n, hour):
    return (device, 20.0 + n, 50.0, "LOW", f"{day(n)}T{hour:02d}:00:00", day(n))


def test_expired_days_are_archived_then_deleted_and_recent_ones_kept(retention):
    # Oldest first, as readings arrive: the newest row (never deleted, see expire()) is recent.
    retention.store("temperature", [temperature(d, n, h) for n in reversed(range(10)) for d in ("t1", "t2")
                                  for h in (1, 2)])
    before = {r[0]: r for r in retention.rows("SELECT * FROM temperature_logs")}
    retention.retention_ref = retention.start_retention()
    wait_until(lambda: retention.rows(f"SELECT COUNT(*) FROM temperature_logs WHERE date < '{day(5)}'") == [(0,)],
               what="expired rows deleted")
    assert retention.rows("SELECT MIN(date), COUNT(*) FROM temperature_logs") == [(day(5), 6 * 4)]
    for n in range(6, 10):  # each expired day: one file, its rows exactly, ids kept, header first
        header, *rows = retention.archived("temperature_logs", day(n))
        assert header == ["id", "device_id", "temperature", "humidity", "status", "timestamp", "date", "created_at"]
        assert len(rows) == 4
        for row in rows:
            assert tuple(row) == tuple(str(v) for v in before[int(row[0])])
    assert not (retention.archive / "temperature_logs" / day(5)[:4] / f"temperature_logs-{day(5)}.csv.gz").exists()


def test_summaries_of_archived_days_answer_as_before_and_the_catalogue_counts_what_is_left(retention):
    power = [("p1", "ON", "", f"{day(9)}T06:30:00", day(9)), ("p1", "", "ON", f"{day(8)}T20:00:00", day(8)),
             ("p1", "OFF", "", f"{day(1)}T01:00:00", day(1))]
    retention.store("temperature", [temperature(d, n, h) for n in reversed(range(10)) for d in ("t1", "t2")
                                  for h in (1, 2)])
    retention.store("power", power)
    summaries, device = Summaries(retention.db), BUILTIN_TYPES["temperature"]
    starts = bucket_starts("day", day(9), day(0))
    before = summaries.buckets(device, "t1", "day", starts)
    power_before = summaries.buckets(BUILTIN_TYPES["power"], "p1", "hour", bucket_starts("hour", day(9), day(8)))
    assert [b["readings"] for b in before] == [2] * 10 and power_before[6]["eb_on_s"] == 1800
    retention.retention_ref = retention.start_retention()
    wait_until(lambda: retention.rows(f"SELECT COUNT(*) FROM temperature_logs WHERE date < '{day(5)}'") == [(0,)],
               what="expired rows deleted")
    wait_until(lambda: retention.rows("SELECT readings FROM devices WHERE device_id = 't1'") == [(12,)],
               what="the catalogue counting 6 days of 2 readings")
    assert summaries.buckets(device, "t1", "day", starts) == before
    assert summaries.buckets(BUILTIN_TYPES["power"], "p1", "hour", bucket_starts("hour", day(9), day(8))) \
        == power_before


def test_the_newest_row_is_never_deleted_so_no_id_is_ever_given_out_twice(retention):
    retention.store("temperature", [temperature("t1", 9, 1), temperature("t1", 8, 1)])
    retention.retention_ref = retention.start_retention()
    wait_until(lambda: retention.rows("SELECT COUNT(*) FROM temperature_logs") == [(1,)], what="the pass")
    assert retention.rows("SELECT date FROM temperature_logs") == [(day(8),)]
    retention.store("temperature", [temperature("t1", 0, 1)])
    assert retention.rows("SELECT id FROM temperature_logs ORDER BY id") == [(2,), (3,)]


def test_a_late_reading_for_an_archived_day_joins_that_days_archive_without_duplicates(retention):
    retention.store("temperature", [temperature("t1", 8, h) for h in (1, 2, 3)] + [temperature("t1", 0, 1)])
    retention.retention_ref = retention.start_retention()
    wait_until(lambda: retention.rows("SELECT COUNT(*) FROM temperature_logs") == [(1,)], what="first pass")
    retention.store("temperature", [temperature("t1", 8, 4)])  # arrives after its day was archived
    retention.store("temperature", [temperature("t1", 0, 2)])
    retention.retention_ref.tell(RetentionNow())
    wait_until(lambda: retention.rows("SELECT COUNT(*) FROM temperature_logs") == [(2,)], what="second pass")
    wait_until(lambda: len(retention.archived("temperature_logs", day(8))) == 1 + 4, what="the late row archived")
    times = [row[5] for row in retention.archived("temperature_logs", day(8))[1:]]
    assert times == [f"{day(8)}T0{h}:00:00" for h in (1, 2, 3, 4)]


def test_a_pass_cut_short_after_archiving_archives_nothing_twice(retention, tmp_path):
    retention.store("temperature", [temperature("t1", 7, h) for h in (1, 2)] + [temperature("t1", 0, 1)])
    rows = retention.rows("SELECT * FROM temperature_logs ORDER BY id")[:2]
    # As if the service had stopped after writing the archive and before deleting.
    path = retention.archive / "temperature_logs" / day(7)[:4] / f"temperature_logs-{day(7)}.csv.gz"
    assert archive_day(path, ["id", "device_id", "temperature", "humidity", "status", "timestamp", "date",
                              "created_at"], rows, set()) == [(rows[0][0], rows[1][0])]
    retention.retention_ref = retention.start_retention()
    wait_until(lambda: retention.rows("SELECT COUNT(*) FROM temperature_logs") == [(1,)], what="the pass")
    assert [int(r[0]) for r in retention.archived("temperature_logs", day(7))[1:]] == [r[0] for r in rows]


def test_a_pass_is_skipped_while_another_instance_on_the_database_runs_one(retention):
    retention.store("temperature", [temperature("t1", 8, 1), temperature("t1", 0, 1)])
    other_instance = open_database(str(retention.db_path), 5)
    with exclusive_pass(other_instance) as ours:
        assert ours
        retention.retention_ref = retention.start_retention()
        wait_until(lambda: "retention" in retention.housekept, what="the pass, skipped")
        assert retention.rows("SELECT COUNT(*) FROM temperature_logs") == [(2,)]
    retention.retention_ref.tell(RetentionNow())
    wait_until(lambda: retention.rows("SELECT COUNT(*) FROM temperature_logs") == [(1,)], what="the next pass")


def test_one_pass_at_a_time_across_instances_on_postgresql(pg_url):
    first, second = (connect_database(SimpleNamespace(url=pg_url, busy_timeout=5), 2) for _ in range(2))
    with exclusive_pass(first) as ours:
        assert ours
        with exclusive_pass(second) as theirs:
            assert not theirs
    with exclusive_pass(second) as theirs:
        assert theirs
    first.close()
    second.close()


def day_records(device, device_id, date):
    return device.records(device.rows(device_id, date), device.state_before(device_id, date, None))


def test_power_replies_keep_the_state_set_before_the_cutoff(retention):
    power = BUILTIN_TYPES["power"]
    retention.store("power", [("p1", "ON", "", f"{day(9)}T08:00:00", day(9)),   # grid on, long ago
                            ("p1", "", "ON", f"{day(8)}T09:00:00", day(8)),   # generator on
                            ("p1", "OFF", "", f"{day(7)}T10:00:00", day(7)),  # grid off: the latest EB
                            ("p1", "", "OFF", f"{day(2)}T11:00:00", day(2))])
    expected = day_records(power, "p1", day(2))
    assert expected == [{"ebstatus": "OFF", "dgstatus": "OFF", "timestamp": f"{day(2)}T11:00:00"}]
    retention.retention_ref = retention.start_retention()
    wait_until(lambda: retention.rows("SELECT COUNT(*) FROM power_status_logs") == [(3,)], what="the pass")
    # The superseded grid event is archived and gone; each source's latest older event stays.
    assert retention.rows("SELECT ebstatus, dgstatus, date FROM power_status_logs ORDER BY date") == \
        [("", "ON", day(8)), ("OFF", "", day(7)), ("", "OFF", day(2))]
    assert [r[2] for r in retention.archived("power_status_logs", day(9))[1:]] == ["ON"]
    assert day_records(power, "p1", day(2)) == expected
    retention.db.close()  # this thread's connection


def test_rejected_messages_expire_by_when_they_were_received(retention):
    con = sqlite3.connect(retention.db_path)
    retention.store("temperature", [])  # the writer has created the tables
    with con:
        con.executemany("INSERT INTO rejected_messages (topic, payload, reason, received_at) VALUES (?,?,?,?)",
                        [("home/temperature", b"\xff{not json", "not valid JSON", f"{day(6)} 10:00:00"),
                         ("home/temperature", b"{}", "missing field 'device_id'", f"{day(1)} 10:00:00")])
    con.close()
    retention.retention_ref = retention.start_retention()
    wait_until(lambda: retention.rows("SELECT COUNT(*) FROM rejected_messages") == [(1,)], what="the pass")
    [row] = retention.archived("rejected_messages", day(6))[1:]
    assert row[1:4] == ["home/temperature", "\\xff{not json", "not valid JSON"]


@pytest.mark.skipif(not shutil.which("sqlite3"), reason="the sqlite3 command-line shell is not installed")
def test_an_archive_reads_back_into_its_table_with_the_sqlite3_shell(retention):
    retention.store("fingerprint", [("f1", "u1", "PASS", f"{day(9)}T07:00:00", day(9)),
                                  ("f1", "u2", "FAIL", f"{day(9)}T07:01:00", day(9)),
                                  ("f1", "u1", "PASS", f"{day(0)}T07:00:00", day(0))])
    before = retention.rows("SELECT * FROM fingerprint_logs ORDER BY id")
    retention.retention = dataclasses.replace(retention.retention,
                                              by_type={**retention.retention.by_type, "fingerprint": 5})
    retention.retention_ref = retention.start_retention()
    wait_until(lambda: retention.rows("SELECT COUNT(*) FROM fingerprint_logs") == [(1,)], what="the pass")
    path = retention.archive / "fingerprint_logs" / day(9)[:4] / f"fingerprint_logs-{day(9)}.csv.gz"
    # The README's restore command, as an operator would type it.
    subprocess.run(["sqlite3", str(retention.db_path), f'.import --csv --skip 1 "|zcat {path}" fingerprint_logs'],
                   check=True)
    assert retention.rows("SELECT * FROM fingerprint_logs ORDER BY id") == before
