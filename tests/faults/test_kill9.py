"""Fault 1: kill -9, twenty times at random moments, while a publisher sends 10,000 readings."""

import random
import threading
import time

import pytest
from builders import temperature
from conftest import wait_until

TOTAL, KILLS = 10_000, 20


def reading(i):
    return temperature(f"k9-{i % 10}", i, "2026-10-01", value=round(15 + (i % 200) / 10, 1), humidity=55.0)


@pytest.mark.slow
def test_twenty_kill_9s_under_load_lose_nothing_and_store_nothing_twice(service, client):
    rng = random.Random(9)
    service.start().wait_ready()
    done = threading.Event()

    def publish_all():
        for i in range(TOTAL):
            client.publish("home/temperature", reading(i), wait=(i % 100 == 99))
            if i % 100 == 99:
                time.sleep(0.08)  # ~1,200 readings/s: the load lasts through all the kills
        done.set()

    threading.Thread(target=publish_all, daemon=True).start()
    during_load = 0
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.1, 0.8))  # at a random moment: starting up, connecting, mid-stream
        service.kill()
        during_load += not done.is_set()
        service.start()
    service.wait_ready()
    assert done.wait(120), "the publisher did not finish"
    count = lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0]  # noqa: E731
    wait_until(lambda: count() >= TOTAL, 120, what=f"all {TOTAL} readings")
    stored = count()
    distinct = service.query("SELECT COUNT(*) FROM (SELECT DISTINCT device_id, timestamp FROM temperature_logs)")[0][0]
    print(f"kill -9 x{KILLS} ({during_load} while the publisher was sending): sent {TOTAL}, "
          f"stored {stored}, distinct {distinct}, duplicated {stored - distinct}")
    assert distinct == TOTAL and stored == TOTAL
    assert during_load == KILLS, "the load ended before the kills did"
