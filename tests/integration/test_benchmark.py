"""The benchmark runs end to end and prints its table (small numbers: this checks it works, the
numbers themselves are for people; see README "Performance")."""

import subprocess
import sys

import pytest
from conftest import POSTGRES, ROOT


@pytest.mark.slow
def test_the_benchmark_runs_and_prints_every_row(pg_url):  # pg_url: a reachable server, else skip
    result = subprocess.run([sys.executable, "scripts/benchmark.py", "--readings", "3000", "--rows", "90000",
                             "--apps", "5", "--seconds", "2", "--steady", "50", "--steady-seconds", "2", "--burst", "3000",
                             "--compare-with", "HEAD", "--rounds", "1", "--repeat", "3", "--postgres", POSTGRES,
                             "--fleet", "500", "--known", "2000", "--power-hour", "2000"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    table = result.stdout.split("benchmark on ", 1)[1]
    for row in ("ingest, readings stored/s", "ingest, CPU s per 100,000 readings", "ingest, peak RSS",
                "steady 50/s, CPU ms per reading", "idle, CPU", "burst of 3,000, readings stored/s",
                "burst of 3,000, CPU s per 100,000", "burst of 3,000, CPU s per 100,000, vs HEAD",
                "device catalogue, median of 3", "31-day hourly summary, median of 3",
                "366-day daily summary, median of 3", "366-day daily power summary, median of 3",
                "1,440-reading day, 5 apps, p50", "1,440-reading day, 5 apps, p99", "1,440-reading day, CPU per reply",
                "86,400-reading day, first page", "86,400-reading day, all", "start to first reply", "retention pass, longest delete",
                "retention pass, reading stored p50 / max", "PostgreSQL: readings stored/s, 1 instance",
                "PostgreSQL: readings stored/s, 2 instances", "fleet: 500 new devices, readings stored/s",
                "fleet: all 500 stale at once, last delivered", "fleet: 5 apps meanwhile, p50 / p99",
                "fleet: 2,000 known devices, peak RSS", "fleet: 2,000 known devices, CPU s per 100,000",
                "fleet: a reading from each of 2,000 known devices", "power hour of 2,000 events",
                "steady 100/s, three types mixed"):
        assert row in table, row
    assert "wrong or missing" not in result.stdout
