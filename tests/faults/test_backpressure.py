"""Fault 7: a slow database. Every commit is slowed down (tests/faults/slow_service.py) while a
publisher sends 200,000 readings: the service holds a bounded number of messages, its memory
stays flat, and everything is stored once the database catches up."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT

READINGS = 200_000
RECEIVE_MAXIMUM = 1000  # settings.toml's default
# The bound: receive_maximum messages, plus what asyncio had already read from the socket when
# the link paused reading: its StreamReader buffer (128 KiB) and one recv (256 KiB). Each reading
# is more than 100 bytes on the wire.
MOST_IN_HAND = RECEIVE_MAXIMUM + 384 * 1024 // 100


@pytest.mark.slow
def test_a_slow_database_pushes_back_on_the_broker_and_memory_stays_bounded(service, broker):
    service.script = "tests/faults/slow_service.py"
    service.extra_env["SLOW_COMMIT_SECONDS"] = "0.1"
    service.start().wait_ready()
    result = subprocess.run([sys.executable, "scripts/simulate_devices.py", "--quiet", "--port", str(broker.port),
                             "--count", str(READINGS), "--verify", str(service.db_path), "--verify-timeout", "300"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    peak_rss = service.peak_rss_mib()
    assert service.terminate() == 0
    peak_in_hand = int(re.search(r"at most (\d+) messages were in hand", service.log()).group(1))
    print(f"slow database: {READINGS} readings stored; peak in hand {peak_in_hand} "
          f"(bound {MOST_IN_HAND}); peak RSS {peak_rss:.1f} MiB; {result.stdout.splitlines()[-1]}")
    assert peak_in_hand <= MOST_IN_HAND
    assert peak_rss < 100, f"peak RSS {peak_rss:.1f} MiB"
