"""The power rollup against a real SQLite file and the real writer: a full device-hour, then events
that come late (before the hour's last one), repeated, or at the same second as another, in many
commits. The hour's summary is exactly what the raw rows give (tests/reference.py), and an event
after the hour's last one is merged without reading the hour back."""

import dataclasses
import random
import sqlite3

import pytest
import reference
from conftest import FakePeer

from actors.devices import BUILTIN_TYPES
from actors.protocol.messages import Committed, WriteBatch
from actors.runtime.peers import WRITER, Peers
from actors.runtime.settings import load_settings
from actors.storage.models import open_database
from actors.storage.summaries import Summaries, bucket_starts
from actors.writer import WriterActor

HOUR = "2026-04-01T10"


@pytest.fixture
def writer(tmp_path):
    defaults = load_settings(environ={})
    db = open_database(str(tmp_path / "mqtt_data.db"), 5)
    peers, link = Peers(), FakePeer()
    peers.register("link", link)
    ref = WriterActor.start(WRITER, db, dataclasses.replace(defaults.database, path=str(tmp_path / "mqtt_data.db")),
                            peers, None)
    peers.register(WRITER, ref)

    def store(rows):
        ref.tell(WriteBatch("power", tuple(rows), (), (1,)))
        assert link.next() == Committed((1,))
    store.db, store.path = db, tmp_path / "mqtt_data.db"
    yield store
    ref.stop()


def event(second: int, status: str, fraction: str = "") -> tuple:
    source, state = status.split("_")
    timestamp = f"{HOUR}:{second // 60:02d}:{second % 60:02d}{fraction}"
    return ("p1", state if source == "EB" else "", state if source == "DG" else "", timestamp, timestamp[:10])


def hour_summary(store):
    starts = bucket_starts("hour", HOUR[:10], HOUR[:10])
    [bucket] = [b for b in Summaries(store.db).buckets(BUILTIN_TYPES["power"], "p1", "hour", starts)
                if b["start"].startswith(HOUR)]
    return bucket


def raw(store):
    con = sqlite3.connect(store.path)
    try:
        return con.execute("SELECT ebstatus, dgstatus, timestamp FROM power_status_logs").fetchall()
    finally:
        con.close()


def expected(store):
    [bucket] = [b for b in reference.power("hour", raw(store), HOUR[:10], HOUR[:10]) if b["start"].startswith(HOUR)]
    return bucket


def later(store):
    """An event two hours on: the device's "now" (where summaries cut ON time) is past the hour."""
    store([("p1", "OFF", "", f"{HOUR[:11]}12:00:00", HOUR[:10])])


def test_late_and_repeated_power_events_in_a_full_hour_merge_exactly(writer):
    later(writer)
    rng = random.Random(23)
    statuses = ("EB_ON", "EB_OFF", "DG_ON", "DG_OFF")
    in_order = [event(s, rng.choice(statuses), rng.choice(("", ".5"))) for s in range(0, 3600, 2)]
    for i in range(0, len(in_order), 60):  # the hour fills up in order, in commits of 60
        writer(in_order[i:i + 60])
    assert hour_summary(writer) == expected(writer)
    # late ones: on odd seconds, between stored events; at the same second as a stored event from
    # the other source; a repeat of a stored one (ignored); and one after the last, in one commit
    late = [event(rng.randrange(1, 3600, 2), rng.choice(statuses)) for _ in range(40)]
    same_second = [("p1", "", "ON" if e[1] else "", e[3], e[4]) if e[1] else ("p1", "ON", "", e[3], e[4])
                   for e in rng.sample(in_order, 10)]
    for i in range(0, len(late), 8):
        writer(late[i:i + 8] + same_second[i // 8 * 2:i // 8 * 2 + 2])
        assert hour_summary(writer) == expected(writer)
    writer([in_order[5], event(3599, "EB_ON", ".9")])
    bucket = hour_summary(writer)
    assert bucket == expected(writer) and bucket["readings"] == len(raw(writer)) - 1


def test_an_hour_merged_in_order_needs_no_reading_back(writer, monkeypatch):
    from actors.storage import rollups
    read_back = []
    original = rollups.StatesRollup._summed
    monkeypatch.setattr(rollups.StatesRollup, "_summed", lambda *args: read_back.append(1) or original(*args))
    later(writer)
    writer([event(0, "EB_ON"), event(10, "DG_ON")])
    writer([event(20, "EB_OFF"), event(20, "DG_OFF")])
    writer([event(30, "EB_ON")])
    assert read_back == [] and hour_summary(writer) == expected(writer)
    writer([event(5, "EB_OFF")])  # late: the hour is summed again
    assert read_back == [1] and hour_summary(writer) == expected(writer)
