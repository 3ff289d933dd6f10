"""Fault 9: start-up verifies the database's settings and soundness; a damaged database stops
start-up with a clear message and is left exactly as it was."""

import hashlib
import logging
import sqlite3
import subprocess
import sys

import pykka
import pytest
from conftest import ROOT, FakePeer

from actors.runtime.peers import WRITER, Peers
from actors.runtime.settings import load_settings
from actors.storage.models import open_database
from actors.writer import WriterActor


def start_service(db_path, broker):
    env = {"PATH": "/usr/bin:/bin", "MQTT_BROKER_PORT": str(broker.port), "LOG_FILE": "",
           "DATABASE_PATH": str(db_path)}
    return subprocess.run([sys.executable, "system.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=env)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_damaged_database(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE temperature_logs (id INTEGER PRIMARY KEY, device_id TEXT, note TEXT)")
    con.executemany("INSERT INTO temperature_logs (device_id, note) VALUES (?, ?)",
                    [(f"d{i}", "y" * 200) for i in range(2000)])
    con.commit()
    con.close()
    with open(path, "r+b") as f:  # scribble over the middle of a b-tree page
        f.seek(4096 * 5 + 100)
        f.write(b"\x07" * 300)


def test_a_damaged_database_stops_start_up_and_is_left_untouched(tmp_path, broker):
    db = tmp_path / "mqtt_data.db"
    make_damaged_database(db)
    before = digest(db)
    result = start_service(db, broker)
    assert result.returncode == 1
    assert f"the database {db} is damaged" in result.stderr and "database disk image is malformed" in result.stderr
    assert "restore a backup" in result.stderr
    assert digest(db) == before


def test_a_file_that_is_not_a_database_stops_start_up_and_is_left_untouched(tmp_path, broker):
    db = tmp_path / "mqtt_data.db"
    db.write_bytes(b"these are someone's notes, not a database\n" * 100)
    before = digest(db)
    result = start_service(db, broker)
    assert result.returncode == 1 and "file is not a database" in result.stderr
    assert digest(db) == before


def test_a_sound_database_is_checked_and_reported_at_start(service):
    service.start().wait_ready()
    assert f"database {service.db_path}: WAL, synchronous=FULL, busy timeout 5000 ms, quick_check ok" in service.log()


def test_a_database_that_cannot_do_wal_is_refused(caplog):
    settings = load_settings(environ={"DATABASE_PATH": ":memory:"}).database  # memory: no WAL
    peers = Peers()
    peers.register("link", FakePeer())
    caplog.set_level(logging.ERROR)
    writer = WriterActor.start(WRITER, open_database(settings.path, settings.busy_timeout), settings, peers)
    with pytest.raises(pykka.ActorDeadError):
        writer.proxy().address().get(timeout=10)
    assert "cannot be used safely: journal_mode is 'memory', not 'wal'" in caplog.text
