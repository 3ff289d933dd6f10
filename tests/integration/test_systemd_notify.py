"""systemd's notify protocol without systemd: a datagram socket standing in for it (conftest) checks
READY=1, WATCHDOG=1 and STOPPING=1, and that the watchdog is no longer fed once the writer is
stuck (systemd would then restart the service)."""

import time

import pytest
from conftest import wait_until

WATCHDOG_SECONDS = 1.0


@pytest.fixture
def watchdog(service):
    """systemd's watchdog on; what the service tells systemd arrives at `service.systemd`."""
    service.extra_env["WATCHDOG_USEC"] = str(int(WATCHDOG_SECONDS * 1e6))


def test_ready_once_subscribed_then_watchdog_then_stopping(watchdog, service):
    service.start()
    wait_until(lambda: "READY=1" in service.systemd.states(), 30, what="READY=1")
    assert "taking readings and requests" in service.log()  # not before the subscriptions
    wait_until(lambda: service.systemd.states().count("WATCHDOG=1") >= 3, 10, what="the watchdog being fed")
    assert service.terminate() == 0
    assert service.systemd.states()[-1] == "STOPPING=1"


def test_a_stuck_writer_stops_the_watchdog(watchdog, service, client):
    service.script = "tests/faults/slow_service.py"
    service.extra_env["SLOW_COMMIT_SECONDS"] = "3600"  # the next commit never finishes
    service.start()
    wait_until(lambda: service.systemd.states().count("WATCHDOG=1") >= 2, 30, what="the watchdog being fed")
    client.publish("home/temperature", {"device_id": "t", "temperature": 1.0, "humidity": 1.0, "status": "LOW",
                                        "timestamp": "2026-01-01T00:00:00"})
    wait_until(lambda: time.monotonic() - service.systemd.last("WATCHDOG=1") > 2 * WATCHDOG_SECONDS, 15,
               what="the watchdog to starve")
    fed = service.systemd.states().count("WATCHDOG=1")
    time.sleep(2 * WATCHDOG_SECONDS)  # systemd's own timeout: nothing may feed it meanwhile
    assert service.systemd.states().count("WATCHDOG=1") == fed
    service.stop_quietly()
