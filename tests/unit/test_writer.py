"""The writer, against a real SQLite file, with a fake MQTT link."""

import dataclasses
import sqlite3
import threading

import pytest
from conftest import FakePeer, wait_until

from actors.protocol.messages import Availability, Committed, MarkStale, Rejection, StatsRequest, WriteBatch
from actors.runtime.handling import Marks, ack_id
from actors.runtime.peers import WRITER, Peers
from actors.runtime.settings import load_settings
from actors.storage.models import open_database
from actors.storage.readgate import ReadGate
from actors.writer import WriterActor

ROW = ("t1", 21.5, 40.0, "LOW", "2026-01-22T10:00:00", "2026-01-22")


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "mqtt_data.db"


def start_writer(db_path, gate=None, marks=None, **overrides):
    settings = dataclasses.replace(load_settings(environ={}).database, path=str(db_path),
                                   **{"busy_timeout": 0.05, "retry_delay": 0.02, **overrides})
    peers, link = Peers(), FakePeer()
    peers.register("link", link)
    db = open_database(settings.path, settings.busy_timeout, settings.checkpoint_mb)
    return WriterActor.start(WRITER, db, settings, peers, None, gate, marks=marks), link


def rows(db_path, sql):
    con = sqlite3.connect(db_path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_rows_and_rejections_are_committed_then_acknowledged(db_path):
    writer, link = start_writer(db_path)
    writer.tell(WriteBatch("temperature", (ROW,), (Rejection("home/temperature", b"\xff{x", "not valid JSON",
                                                             "2026-01-22 10:00:01"),), (1, 2)))
    assert link.next() == Committed((1, 2))
    [stored] = rows(db_path, "SELECT device_id, temperature, humidity, status, timestamp, date, created_at "
                             "FROM temperature_logs")
    assert stored[:6] == ROW and len(stored[6]) == 19  # created_at: 'YYYY-MM-DD HH:MM:SS' UTC
    assert rows(db_path, "SELECT topic, payload, reason, received_at FROM rejected_messages") == \
        [("home/temperature", b"\xff{x", "not valid JSON", "2026-01-22 10:00:01")]


def test_the_writer_names_a_transaction_in_its_mark_until_its_statements_have_run(db_path):
    """What a process that dies in the writer leaves behind (actors/runtime/handling.py): the packet ids
    of the transaction whose statements were running; nothing once they have run."""
    writer, link = start_writer(db_path, marks=Marks(str(db_path), "svc"))
    writer.tell(WriteBatch("temperature", (ROW,), (), (ack_id(1, 41),)))
    assert link.next() == Committed((ack_id(1, 41),))
    assert Marks(str(db_path), "svc").left_by("link") == frozenset()  # cleared before the commit
    writer.tell(WriteBatch("temperature", (ROW[:2],), (), (ack_id(2, 42), ack_id(3, 43))))  # breaks its statement
    wait_until(lambda: not writer.is_alive(), what="the writer to crash")
    assert Marks(str(db_path), "svc").left_by("link") == {42, 43}


def test_the_database_is_in_wal_mode_with_the_day_index(db_path):
    writer, link = start_writer(db_path)
    writer.tell(WriteBatch("power", (("p1", "ON", "", "2026-01-22T10:00:00", "2026-01-22"),), (), (1,)))
    link.next()
    assert rows(db_path, "PRAGMA journal_mode") == [("wal",)]
    for table in ("temperature_logs", "power_status_logs", "fingerprint_logs"):
        plan = rows(db_path, f"EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE device_id = 'x' "
                             "AND date = '2026-01-22' ORDER BY timestamp")
        assert "USING INDEX" in plan[0][3] and "TEMP B-TREE" not in str(plan), plan


def test_a_redelivered_reading_is_stored_once_but_a_different_one_at_the_same_time_is_kept(db_path):
    writer, link = start_writer(db_path)
    other = ("t1", 99.0, 40.0, "HIGH", "2026-01-22T10:00:00", "2026-01-22")
    writer.tell(WriteBatch("temperature", (ROW,), (), (1,)))
    assert link.next() == Committed((1,))
    writer.tell(WriteBatch("temperature", (ROW, other, ROW), (), (2, 3, 4)))
    assert link.next() == Committed((2, 3, 4))
    assert rows(db_path, "SELECT temperature FROM temperature_logs ORDER BY temperature") == [(21.5,), (99.0,)]


def failed_commits(writer) -> int:
    return writer.proxy().commit_failures.get()


def test_nothing_is_acknowledged_while_the_database_is_locked_and_all_of_it_commits_after(db_path):
    writer, link = start_writer(db_path)
    writer.tell(WriteBatch("temperature", (ROW,), (), (1,)))  # creates the file and tables
    link.next()
    operator = sqlite3.connect(db_path, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")  # an operator's sqlite3 session holding the write lock
    for i in range(3):
        writer.tell(WriteBatch("power", ((f"p{i}", "ON", "", "2026-01-22T10:00:00", "2026-01-22"),), (), (10 + i,)))
    wait_until(lambda: failed_commits(writer) >= 1, what="a failed commit")
    assert link.inbox.empty(), "acknowledged while nothing could be committed"
    operator.execute("ROLLBACK")
    operator.close()
    # Everything that piled up goes in one transaction, with one acknowledgement message.
    assert link.next() == Committed((10, 11, 12))
    assert rows(db_path, "SELECT COUNT(*) FROM power_status_logs") == [(3,)]


def test_a_stale_state_is_published_only_once_it_is_stored(db_path):
    """So that an app that saw the announcement and asks for the catalogue sees the state."""
    writer, link = start_writer(db_path)
    writer.tell(WriteBatch("temperature", (ROW,), (), (1,)))
    link.next()
    [(received_at,)] = rows(db_path, "SELECT received_at FROM devices WHERE device_id = 't1'")
    operator = sqlite3.connect(db_path, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")
    announcement = Availability((("home/availability/temperature/t1", b"{}"),), went_stale=1, stale_now=1)
    writer.tell(MarkStale((("temperature", "t1", received_at),), announcement))
    wait_until(lambda: failed_commits(writer) >= 1, what="a failed commit")
    assert link.inbox.empty(), "announced before it was stored"
    operator.execute("ROLLBACK")
    operator.close()
    assert link.next() == announcement
    assert rows(db_path, "SELECT state FROM devices WHERE device_id = 't1'") == [("stale",)]


def test_a_transaction_holds_at_most_max_batch_rows(db_path):
    writer, link = start_writer(db_path, max_batch=2)
    for i in range(3):
        writer.tell(WriteBatch("temperature", (ROW[:4] + (f"2026-01-22T10:00:0{i}", "2026-01-22"),) * 2, (),
                               (2 * i, 2 * i + 1)))
    assert [link.next() for _ in range(3)] == [Committed((0, 1)), Committed((2, 3)), Committed((4, 5))]


def test_stopping_commits_what_is_pending(db_path):
    writer, link = start_writer(db_path)
    writer.tell(WriteBatch("fingerprint", (("f1", "u1", "PASS", "2026-01-22T10:00:00", "2026-01-22"),), (), (5,)))
    writer.stop()
    assert link.next() == Committed((5,))
    assert rows(db_path, "SELECT user_id FROM fingerprint_logs") == [("u1",)]


@pytest.mark.slow
def test_the_wal_stays_bounded_while_reads_never_stop(db_path):
    """Two readers whose reads always overlap keep SQLite from restarting the WAL by itself
    (it grew to 1.4 GiB in 20 s without the gate); the writer's checkpoint makes it."""
    gate = ReadGate()
    writer, link = start_writer(db_path, gate, checkpoint_mb=1, busy_timeout=5.0)
    writer.tell(WriteBatch("temperature", (ROW,), (), (0,)))
    assert link.next() == Committed((0,))
    stop = threading.Event()

    def read():
        con = sqlite3.connect(db_path, isolation_level=None)
        while not stop.is_set():
            with gate.reading():
                con.execute("BEGIN")
                con.execute("SELECT COUNT(*) FROM temperature_logs WHERE device_id = 't1'").fetchall()
                stop.wait(0.02)  # a read that lasts; the other reader starts while it runs
                con.execute("COMMIT")
        con.close()

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    wal, largest = db_path.parent / "mqtt_data.db-wal", 0
    try:
        for batch in range(1, 301):  # some 30 MiB of WAL in all
            rows_ = tuple((f"t{i % 20}", 20.0, 50.0, "LOW", f"2026-01-22T00:00:00.{batch:03d}{i:03d}", "2026-01-22")
                          for i in range(2000))
            writer.tell(WriteBatch("temperature", rows_, (), (batch,)))
            assert link.next() == Committed((batch,))
            largest = max(largest, wal.stat().st_size)
    finally:
        stop.set()
        for r in readers:
            r.join()
    writer.tell(StatsRequest())
    stats = link.next()
    writer.stop()
    assert stats.checkpoints >= 5
    assert largest < 4 * 2**20, f"the WAL reached {largest / 2**20:.1f} MiB"
