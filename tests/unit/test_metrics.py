"""/metrics as Prometheus reads it, from the numbers the stats publish (one source), and /readyz's
judgement on an injected clock. End to end against a running service: tests/integration/test_metrics_endpoints.py."""

import itertools

from conftest import FakeClock
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from actors.mqtt.status import StatusReport
from actors.protocol.messages import WriterStats
from actors.runtime.metrics import REFRESH, MetricsServer
from actors.runtime.settings import load_settings

SETTINGS = load_settings(environ={"METRICS_LISTEN": "127.0.0.1:9108"})
WRITER = WriterStats(stored=(("temperature", 7), ("power", 2), ("fingerprint", 0)), rejected=3, backlog=4,
                     commit_failures=1, last_commit_ms=1.5, max_commit_ms=9.0, database_bytes=10_000,
                     last_stored_at=(("temperature", "2026-12-04 10:00:00"),), wal_bytes=2_000, checkpoints=1,
                     wrong_clock_totals=(("temperature", 1),),
                     rejected_by=(("temperature", "clock", 1), ("temperature", "invalid", 2)),
                     commit_seconds=((1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1), 40.5), commits=4,
                     last_checkpoint_at="2026-12-04 09:00:00")


def samples(report: StatusReport) -> dict:
    """{(name, labels as a sorted tuple): value} of everything /metrics shows."""
    text = generate_latest(MetricsServer(report, SETTINGS).registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_metrics_are_the_stats_numbers():
    report = StatusReport("svc", SETTINGS.status, clock=itertools.count(0, 10**6).__next__)
    report.connected, report.connections = True, 2
    report.readings_in["ingest/temperature"] += 10
    report.replied("temperature", "ok", 0.004)
    report.replied("temperature", "invalid_field", 0.002)
    report.replied("devices", "rate_limited")
    report.restarted("query/3")
    report.housekept["backup"] = "2026-12-04 08:00:00"
    report.by_type = (("temperature", 5, 2),)
    report.stats(WRITER, 6)
    got = samples(report)
    assert got[("mqtt_client_build_info", (("version", "1.2.0"),))] == 1
    assert got[("mqtt_client_broker_connected", ())] == 1
    assert got[("mqtt_client_readings_received_total", (("type", "temperature"),))] == 10
    assert got[("mqtt_client_readings_received_total", (("type", "power"),))] == 0
    assert got[("mqtt_client_readings_stored_total", (("type", "temperature"),))] == 7
    assert got[("mqtt_client_readings_rejected_total", (("reason", "invalid"), ("type", "temperature")))] == 2
    assert got[("mqtt_client_requests_total", (("kind", "temperature"), ("outcome", "invalid_field")))] == 1
    assert got[("mqtt_client_requests_total", (("kind", "devices"), ("outcome", "rate_limited")))] == 1
    assert got[("mqtt_client_reply_duration_seconds_count", ())] == 2  # a refusal has no latency of ours
    assert got[("mqtt_client_reply_duration_seconds_bucket", (("le", "0.0025"),))] == 1
    assert got[("mqtt_client_reply_duration_seconds_bucket", (("le", "0.005"),))] == 2
    assert got[("mqtt_client_commit_duration_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("mqtt_client_commit_duration_seconds_bucket", (("le", "+Inf"),))] == 4
    assert got[("mqtt_client_commit_duration_seconds_sum", ())] == 40.5
    assert got[("mqtt_client_commits_total", ())] == 4 and got[("mqtt_client_commit_failures_total", ())] == 1
    assert got[("mqtt_client_messages_in_hand", ())] == 6 and got[("mqtt_client_writer_backlog_rows", ())] == 4
    assert got[("mqtt_client_devices", (("state", "live"), ("type", "temperature")))] == 3
    assert got[("mqtt_client_devices", (("state", "stale"), ("type", "temperature")))] == 2
    assert got[("mqtt_client_actor_restarts_total", (("actor", "query"),))] == 1
    assert got[("mqtt_client_last_stored_timestamp_seconds", (("type", "temperature"),))] == 1796378400
    assert got[("mqtt_client_last_backup_timestamp_seconds", ())] == 1796371200
    assert ("mqtt_client_last_retention_timestamp_seconds", ()) not in got  # none yet: absent, not 0
    assert got[("mqtt_client_database_bytes", ())] == 10_000 and got[("mqtt_client_wal_bytes", ())] == 2_000
    assert got[("mqtt_client_process_resident_memory_bytes", ())] > 0
    assert got[("mqtt_client_database_disk_free_bytes", ())] > 0 and got[("mqtt_client_ready", ())] == 1
    assert got[("mqtt_client_backup_interval_seconds", ())] == 86400
    # no label grows with the fleet: only types, kinds, outcomes, reasons, actors, states, buckets
    labels = {name for (_, labels) in got for name, _ in labels}
    assert labels <= {"version", "type", "reason", "kind", "outcome", "actor", "state", "le"}


def test_ready_when_connected_and_the_writer_answers_and_not_otherwise():
    clock = FakeClock(100.0)
    report = StatusReport("svc", SETTINGS.status, clock=clock)
    server = MetricsServer(report, SETTINGS, clock=clock)
    assert server.readiness() == (False, "not connected to the MQTT broker")
    report.connected = True
    assert server.readiness() == (False, "the database writer has not answered yet")
    report.stats(WRITER, 0)
    assert server.readiness()[0]
    clock.now += 3 * REFRESH + 2  # the writer stopped answering (stuck in a commit)
    assert server.readiness() == (False, f"the database writer has not answered for {3 * REFRESH + 2:.0f} s")
    report.stats(WRITER, 0)
    assert server.readiness()[0]
    report.connected = False
    assert not server.readiness()[0]
