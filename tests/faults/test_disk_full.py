"""Fault 5: the database cannot grow (disk full). Simulated with the service's own size cap,
`database.max_size_mb`, which is SQLite's max_page_count on the writer's connection."""

import sqlite3

from builders import temperature
from conftest import wait_until


def reading(i):
    return temperature("full", i, "2026-09-01", value=20.0 + i % 7, status="HIGH")


def test_a_full_database_acknowledges_nothing_says_so_and_catches_up_when_space_returns(service, client, tmp_path):
    # 1 MiB in all, of which ~0.7 MiB is taken by an operator's table that will be dropped later.
    filler = sqlite3.connect(service.db_path)
    filler.execute("PRAGMA journal_mode = wal")
    filler.execute("CREATE TABLE filler (data BLOB)")
    filler.executemany("INSERT INTO filler VALUES (?)", [(b"x" * 3500,) for _ in range(200)])
    filler.commit()
    filler.close()
    config = tmp_path / "small.toml"
    config.write_text("[database]\nmax_size_mb = 1\nretry_delay = 0.1\n")
    service.serve_metrics().start("--config", str(config)).wait_ready()

    total = 6000  # far more than the ~0.3 MiB left can hold
    for i in range(total):
        client.publish("home/temperature", reading(i), wait=(i % 500 == 499))
    wait_until(lambda: (service.metric("mqtt_client_commit_failures_total") or 0) >= 1, 30, what="a failed commit")
    stuck = service.query("SELECT COUNT(*) FROM temperature_logs")[0][0]
    assert stuck < total

    operator = sqlite3.connect(service.db_path, timeout=30)
    operator.execute("DROP TABLE filler")  # space returns (inside the file: the cap stays)
    operator.commit()
    operator.close()
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == total, 60,
               what="everything once space returned")
    # the operator's story (the feature here): the full disk and its end, each said once, not per retry
    wait_until(lambda: "database writes resumed" in service.log())  # logged just after the commit
    assert service.log().count("cannot commit to the database (database or disk is full)") == 1
    assert service.query("PRAGMA integrity_check") == [("ok",)]
    print(f"disk full: {stuck} of {total} stored before space returned, {total} after; integrity ok")
