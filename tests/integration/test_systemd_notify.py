"""systemd's notify protocol without systemd: a datagram socket standing in for it checks
READY=1, WATCHDOG=1 and STOPPING=1, and that the watchdog is no longer fed once the writer is
stuck (systemd would then restart the service)."""

import socket
import threading
import time

import pytest

from conftest import wait_until

WATCHDOG_SECONDS = 1.0


class FakeSystemd:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = str(path)
        self.received: list[tuple[float, str]] = []
        self._open = True
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self):
        while self._open:
            try:
                data = self.sock.recv(4096)
            except OSError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def states(self):
        return [state for _, state in self.received]

    def last(self, state):
        times = [t for t, s in self.received if s == state]
        return times[-1] if times else None

    def close(self):
        self._open = False
        self.sock.close()


@pytest.fixture
def systemd(tmp_path, service):
    fake = FakeSystemd(tmp_path / "notify.sock")
    service.extra_env.update(NOTIFY_SOCKET=fake.path, WATCHDOG_USEC=str(int(WATCHDOG_SECONDS * 1e6)))
    yield fake
    fake.close()


def test_ready_once_subscribed_then_watchdog_then_stopping(systemd, service):
    service.start()
    wait_until(lambda: "READY=1" in systemd.states(), 30, what="READY=1")
    assert "taking readings and requests" in service.log()  # not before the subscriptions
    wait_until(lambda: systemd.states().count("WATCHDOG=1") >= 3, 10, what="the watchdog being fed")
    assert service.terminate() == 0
    assert systemd.states()[-1] == "STOPPING=1"


def test_a_stuck_writer_stops_the_watchdog(systemd, service, client):
    service.script = "tests/faults/slow_service.py"
    service.extra_env["SLOW_COMMIT_SECONDS"] = "3600"  # the next commit never finishes
    service.start()
    wait_until(lambda: systemd.states().count("WATCHDOG=1") >= 2, 30, what="the watchdog being fed")
    client.publish("home/temperature", {"device_id": "t", "temperature": 1.0, "humidity": 1.0, "status": "LOW",
                                        "timestamp": "2026-01-01T00:00:00"})
    wait_until(lambda: time.monotonic() - systemd.last("WATCHDOG=1") > 2 * WATCHDOG_SECONDS, 15,
               what="the watchdog to starve")
    fed = systemd.states().count("WATCHDOG=1")
    time.sleep(2 * WATCHDOG_SECONDS)  # systemd's own timeout: nothing may feed it meanwhile
    assert systemd.states().count("WATCHDOG=1") == fed
    service.stop_quietly()
