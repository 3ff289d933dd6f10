"""Online backups: consistent copies taken while the service writes, checked, rotated."""

import sqlite3
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest
from builders import temperature
from conftest import ROOT, wait_until

from actors.backup import FIRST_BACKUP, BackupFailed, backup_database, first_backup_in, newest_backup


def reading(i):
    return temperature("bk", i, "2026-06-01", value=20.0)


def rows(path):
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT COUNT(*) FROM temperature_logs").fetchone()[0], \
            con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def test_a_backup_taken_while_readings_stream_in_is_consistent_and_rotation_keeps_the_newest(service, client,
                                                                                           tmp_path):
    service.start().wait_ready()
    done = threading.Event()

    def stream():
        for i in range(3000):
            client.publish("home/temperature", reading(i), wait=(i % 100 == 99))
        done.set()

    threading.Thread(target=stream, daemon=True).start()
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] > 200)
    backups = tmp_path / "backups"
    made = []
    for _ in range(4):  # mid-stream: the writer keeps committing around the copy
        result = subprocess.run([sys.executable, "scripts/backup.py", "--to", str(backups), "--keep", "2"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin", "DATABASE_PATH": str(service.db_path)})
        assert result.returncode == 0, result.stderr
        made.append(result.stdout.split("backup written: ")[1].split(" (")[0])
    kept = sorted(str(p) for p in backups.glob("*.db"))
    assert kept == sorted(made[-2:])  # the newest two
    counts = [rows(path) for path in kept]
    assert all(check == "ok" and 0 < n <= 3000 for n, check in counts), counts
    assert done.wait(60)
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 3000)


def test_the_service_backs_up_on_schedule(service, tmp_path):
    config = tmp_path / "backup.toml"
    config.write_text(f'[backup]\ndir = "{tmp_path}/scheduled"\ninterval_hours = 0.0003\nkeep = 3\n')
    service.start("--config", str(config)).wait_ready()
    wait_until(lambda: len(list((tmp_path / "scheduled").glob("*.db"))) >= 2, 30, what="two scheduled backups")
    assert "backup written:" in service.log() and "integrity_check ok" in service.log()


def test_a_restart_does_not_put_off_the_next_backup(tmp_path):
    """The next backup is due an interval after the newest one, whenever the service starts: one
    restarted every few hours still backs up once a day."""
    database = tmp_path / "mqtt_data.db"
    sqlite3.connect(database).close()
    assert newest_backup(str(database), str(tmp_path / "none")) is None
    made = backup_database(str(database), str(tmp_path / "b"), 3)
    newest = newest_backup(str(database), str(tmp_path / "b"))
    assert abs((datetime.now(timezone.utc) - newest).total_seconds()) < 60 and made.exists()
    day = 86400.0
    now = datetime(2026, 12, 5, 12, tzinfo=timezone.utc)
    assert first_backup_in(None, now, day) == FIRST_BACKUP
    assert first_backup_in(now - timedelta(hours=10), now, day) == 14 * 3600
    assert first_backup_in(now - timedelta(hours=30), now, day) == 1.0  # overdue: at once


def test_a_backup_of_a_damaged_database_is_refused_and_not_kept(tmp_path):
    source = tmp_path / "damaged.db"
    con = sqlite3.connect(source)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT)")
    con.executemany("INSERT INTO t (note) VALUES (?)", [("y" * 200,) for _ in range(2000)])
    con.commit()
    con.close()
    with open(source, "r+b") as f:
        f.seek(4096 * 5 + 100)
        f.write(b"\x07" * 300)
    with pytest.raises(BackupFailed, match="failed integrity_check"):
        backup_database(str(source), str(tmp_path / "out"), keep=3)
    assert not list((tmp_path / "out").iterdir())  # not even the partial copy
