"""What the service says about itself (actors/mqtt/status.py): the stats stay small whatever the
fleet, and the status belongs to the process, not to one MQTT link."""

import itertools

import orjson
from conftest import contract

from actors.mqtt.status import StatusReport
from actors.protocol.messages import WriterStats
from actors.runtime.counting import TopCounts
from actors.runtime.settings import load_settings

ERROR_CODES = contract().document["components"]["schemas"]["Error"]["properties"]["code"]["enum"]

SETTINGS = load_settings(environ={})


def writer_stats(wrong: TopCounts, totals) -> WriterStats:
    return WriterStats(stored=(("temperature", 10**9), ("power", 10**9), ("fingerprint", 10**9)), rejected=10**9,
                       backlog=0, commit_failures=0, last_commit_ms=1.0, max_commit_ms=2.0, database_bytes=10**12,
                       last_stored_at=(("temperature", "2026-12-04 10:00:00"),), wal_bytes=0, checkpoints=0,
                       wrong_clocks=tuple((*key, n) for key, n in wrong.top(20)), wrong_clock_totals=totals,
                       rejected_by=tuple((kind, reason, 10**9) for kind in ("temperature", "power", "fingerprint")
                                         for reason in ("invalid", "clock", "too_large", "internal", "set_aside")),
                       commit_seconds=((10**9,) * 15, 1e9), commits=10**9, last_checkpoint_at="2026-12-04 10:00:00")


def test_the_stats_stay_under_16_kib_with_thousands_of_devices_with_a_wrong_clock_and_every_count_there_is():
    wrong = TopCounts(100)
    for n in range(5000):  # device ids of the longest kind allowed (128 characters)
        for _ in range(1 + n % 7):
            wrong.add(("temperature", f"{n:05d}".ljust(128, "x")))
    report = StatusReport("svc", SETTINGS.status, clock=itertools.count(0, 10**6).__next__)  # always due
    for kind, code in itertools.product(("temperature", "power", "fingerprint", "devices"), ERROR_CODES + ["ok"]):
        for _ in range(3):
            report.replied(kind, code, 1e6)
    for actor in ("writer", "query/0", "query/63", "backup", "retention", "availability", "link", "ingest/power"):
        report.restarted(actor)
    report.readings_in.update({"ingest/temperature": 10**9, "ingest/power": 10**9, "ingest/fingerprint": 10**9})
    report.by_type = (("temperature", 10**7, 10**7),)
    stats = orjson.loads(report.stats(writer_stats(wrong, (("temperature", wrong.total),)), 1000))
    assert stats["actor_restarts"]["query"] == 2 and stats["requests"]["answered"] == 4 * 12 * 3
    assert contract().problems("home/stats/svc", orjson.dumps(stats)) == []
    assert len(orjson.dumps(stats)) < 16 * 1024
    assert len(stats["clock_rejected"]["temperature"]) == 20
    assert stats["clock_rejected_total"] == {"temperature": sum(1 + n % 7 for n in range(5000))}


def test_the_most_counted_devices_are_found_with_a_fixed_number_of_counters():
    counts = TopCounts(50)
    for n in range(10_000):  # one count each: noise
        counts.add(("t", f"noise{n}"))
        if n % 100 == 0:
            for worst in range(5):
                counts.add(("t", f"worst{worst}"), 20)
    assert len(counts.counts) == 50
    assert {key[1] for key, _ in counts.top(5)} == {f"worst{w}" for w in range(5)}


def test_the_status_is_the_processes_across_link_restarts():
    report = StatusReport("svc", SETTINGS.status)
    report.link_started()
    report.connections += 1
    started = report.started_at
    report.link_started()  # the link crashed and runs again: same report
    assert report.link_restarts == 1
    status = orjson.loads(report.status("online"))
    assert status["started_at"] == started and status["connections"] == 1
