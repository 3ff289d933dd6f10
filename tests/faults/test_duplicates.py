"""Fault 2: a reading delivered again is stored once; different readings at one time are kept."""

import json

from builders import fingerprint, power
from conftest import wait_until


def test_a_repeated_reading_is_stored_once_and_different_ones_at_the_same_time_are_all_kept(service, client):
    service.start().wait_ready()
    reading = {"device_id": "dup", "temperature": 21.5, "humidity": 40.0, "status": "LOW",
               "timestamp": "2026-07-01T08:00:00"}
    for _ in range(3):  # a device repeating itself (a broker resend looks the same to us)
        client.publish("home/temperature", reading)
    client.publish("home/temperature", json.dumps(reading, indent=2))  # same values, other bytes
    client.publish("home/temperature", {**reading, "timestamp": "2026-07-01 08:00:00"})  # same instant
    client.publish("home/temperature", {**reading, "temperature": 22.0})  # a different reading, same time
    for status in ("EB_ON", "EB_ON", "DG_OFF"):  # two different power events at one instant
        client.publish("home/power", power("dup", status, "2026-07-01T08:00:00"))
    client.publish("home/fingerprint", fingerprint("dup", "a", "PASS", "2026-07-01T08:00:00"))
    client.publish("home/fingerprint", fingerprint("dup", "b", "PASS", "2026-07-01T08:00:00"))
    client.publish("home/fingerprint", fingerprint("dup", "a", "PASS", "2026-07-01T08:00:00"))
    marker = {**reading, "device_id": "marker"}
    client.publish("home/temperature", marker)  # stored after the temperature readings before it
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs WHERE device_id = 'marker'")[0][0])
    wait_until(lambda: service.query("SELECT COUNT(*) FROM fingerprint_logs")[0][0] == 2)
    wait_until(lambda: service.query("SELECT COUNT(*) FROM power_status_logs")[0][0] == 2)
    assert service.query("SELECT temperature FROM temperature_logs WHERE device_id = 'dup' "
                         "ORDER BY temperature") == [(21.5,), (22.0,)]
    assert sorted(service.query("SELECT ebstatus, dgstatus FROM power_status_logs")) == [("", "OFF"), ("ON", "")]
    assert sorted(service.query("SELECT user_id FROM fingerprint_logs")) == [("a",), ("b",)]


def test_a_retained_bad_reading_is_kept_once_across_restarts_and_separate_publishes_are_each_kept(db_service, client):
    """A retained message comes again on every subscribe (each start); a bad one is kept once. The
    same bad payload published again, not retained, is another message: another row."""
    service = db_service
    bad = b'{"device_id": "broken", "temperature": "warm"}'
    client.client.publish("home/temperature", bad, qos=1, retain=True).wait_for_publish(10)

    def marker(n):  # stored after whatever was delivered before it
        client.publish("home/temperature", {"device_id": "marker", "temperature": 20.0, "humidity": 40.0,
                                            "status": "LOW", "timestamp": f"2026-07-01T08:00:0{n}"})
        wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == n)

    def kept():
        return service.query("SELECT COUNT(*) FROM rejected_messages WHERE payload = ?", (bad,))[0][0]

    try:
        for start in (1, 2, 3):
            service.start().wait_ready()
            marker(start)
            assert kept() == 1, f"start {start}"
            assert service.terminate() == 0
        service.start().wait_ready()
        client.publish("home/temperature", bad)
        client.publish("home/temperature", bad)
        marker(4)
        assert kept() == 3
    finally:
        client.client.publish("home/temperature", b"", qos=1, retain=True).wait_for_publish(10)
