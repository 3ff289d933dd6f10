"""Fault 6: an actor raising unexpectedly is restarted and loses nothing (the MQTT link hands on
again what it held, without reconnecting); a crash loop ends the process. In-process, with the
real supervisor, a real Mosquitto and a real SQLite file; the crashes are injected with monkeypatch."""

import dataclasses
import logging
import queue
import sqlite3
import subprocess
import sys

import pykka
import pytest
from builders import temperature
from conftest import ROOT, FakeSystemd, MqttClient, wait_until

from actors.ingest import IngestActor
from actors.mqtt.traffic import Traffic
from actors.protocol.messages import WriteBatch
from actors.query import QueryActor
from actors.runtime.settings import load_settings
from actors.supervisor import Supervisor


@pytest.fixture
def settings(broker, tmp_path):
    s = load_settings(environ={"MQTT_BROKER_HOST": "127.0.0.1", "MQTT_BROKER_PORT": str(broker.port),
                               "MQTT_CLIENT_ID": "supervised", "DATABASE_PATH": str(tmp_path / "d.db"),
                               "LOG_FILE": ""})
    return dataclasses.replace(
        s, mqtt=dataclasses.replace(s.mqtt, reconnect_min_delay=0.1, reconnect_max_delay=0.5),
        database=dataclasses.replace(s.database, busy_timeout=0.05, retry_delay=0.05),
        supervisor=dataclasses.replace(s.supervisor, max_restarts=3, restart_window=60),
        status=dataclasses.replace(s.status, stats_interval=1))


@pytest.fixture
def running(settings, broker, caplog, monkeypatch):
    """The whole service in this process; yields (peers, exit codes queue, a device/app client)."""
    caplog.set_level(logging.INFO)
    exits = queue.Queue()
    systemd = FakeSystemd()
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
    supervisor = Supervisor.start(settings, exits.put)
    wait_until(lambda: "READY=1" in systemd.states(), what="the service to be ready")
    client = MqttClient(broker.port)
    yield supervisor.proxy().peers.get(), exits, client
    client.close()
    supervisor.stop()
    systemd.close()


def report():
    """The process's own numbers (the supervisor's StatusReport): restarts by actor, connections."""
    [supervisor] = pykka.ActorRegistry.get_by_class(Supervisor)
    return supervisor.proxy().report.get()


def commit_failed(broker, settings) -> None:
    """Until the service's stats (every second here) count a failed commit."""
    stats = MqttClient(broker.port)
    try:
        stats.subscribe(f"home/stats/{settings.mqtt.client_id}")
        wait_until(lambda: stats.take(5)[1]["commit_failures"] >= 1, 30, what="a failed commit")
    finally:
        stats.close()


def stored(settings, device):
    con = sqlite3.connect(settings.database.path)
    try:
        return con.execute("SELECT COUNT(*) FROM temperature_logs WHERE device_id = ?", (device,)).fetchone()[0]
    finally:
        con.close()


def reading(device, i):
    return temperature(device, i, "2026-06-01", value=20.0, humidity=40.0)


def crash_once(monkeypatch, cls, name):
    """Make cls.name raise the first time it is called, as a bug would."""
    original, calls = getattr(cls, name), []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError(f"injected bug in {cls.__name__}.{name}")
        return original(*args, **kwargs)
    monkeypatch.setattr(cls, name, flaky)


def test_readings_held_by_a_crashed_writer_are_delivered_again_and_stored(running, settings, caplog, broker):
    peers, exits, client = running
    db = settings.database.path
    client.publish("home/temperature", reading("warmup", 0))
    wait_until(lambda: stored(settings, "warmup") == 1)

    operator = sqlite3.connect(db, isolation_level=None)
    operator.execute("BEGIN IMMEDIATE")  # the writer now holds readings it cannot commit
    for i in range(50):
        client.publish("home/temperature", reading("held", i))
    commit_failed(broker, settings)
    # A batch the writer cannot handle (a bug): it crashes with the 50 readings in hand.
    peers.tell("writer", WriteBatch("no-such-device", (("x",),), (), ()))
    operator.execute("ROLLBACK")
    operator.close()

    wait_until(lambda: report().restarts["writer"] == 1, what="the writer crashed and restarted")
    wait_until(lambda: stored(settings, "held") == 50, 30, what="the 50 readings, handed on again")
    assert report().connections == 1  # the link and its connection lived on
    assert exits.empty(), "one crash must not end the process"
    assert "quick_check ok" not in caplog.text  # only at the start (setup): a restart feeds the watchdog at once


def test_a_crashed_link_is_restarted_and_the_status_stays_the_processes(running, settings, caplog, monkeypatch,
                                                                        broker):
    peers, exits, client = running
    status = MqttClient(broker.port)
    try:
        status.subscribe(f"home/status/{settings.mqtt.client_id}")
        before = status.take()[1]
        assert (before["state"], before["connections"]) == ("online", 1)
        crash_once(monkeypatch, Traffic, "receive")  # the first answer from an actor: a bug in the link
        client.publish("home/temperature", reading("after", 0))
        wait_until(lambda: stored(settings, "after") == 1, 30, what="the reading, stored after the link's restart")
        after = wait_until(lambda: (m := status.take()[1])["state"] == "online" and m, 30,
                           what="the status of the new link")
    finally:
        status.close()
    # the process's start and its count of connections, not a new link's
    assert after["started_at"] == before["started_at"] and after["connections"] == 2
    assert exits.empty()


def test_a_reading_held_by_a_crashed_ingest_actor_is_delivered_again_and_stored(running, settings, caplog,
                                                                               monkeypatch):
    peers, exits, client = running
    crash_once(monkeypatch, IngestActor, "validate")
    client.publish("home/temperature", reading("ingest", 1))
    wait_until(lambda: report().restarts["ingest/temperature"] == 1, what="the crash")
    wait_until(lambda: stored(settings, "ingest") == 1, 30, what="the reading, handed on again")
    assert report().connections == 1
    assert exits.empty()


def test_a_request_held_by_a_crashed_query_actor_is_answered_after_all(running, settings, caplog, monkeypatch):
    peers, exits, client = running
    crash_once(monkeypatch, QueryActor, "on_receive")
    client.subscribe_replies("crashy")
    client.publish("home/gettemp/crashy", {"device_id": "nobody", "date": "2026-06-01"})
    topic, reply = client.take(timeout=30)  # the request handed on again, answered by the new instance
    assert topic == "home/datatemp/crashy" and reply["count"] == 0
    assert client.messages.empty(), "answered once"
    assert report().restarts["query"] == 1 and exits.empty()


def test_a_bug_while_answering_is_an_internal_error_reply_not_a_crash(running, settings, caplog, monkeypatch):
    peers, exits, client = running
    crash_once(monkeypatch, QueryActor, "answer")
    client.subscribe_replies("buggy")
    client.publish("home/gettemp/buggy", {"device_id": "nobody", "date": "2026-06-01", "request_id": "r9"})
    topic, reply = client.take()
    assert reply == {"request_id": "r9", "device_id": "nobody", "date": "2026-06-01",
                     "error": {"code": "internal_error", "message": reply["error"]["message"]}}
    assert "injected bug in QueryActor.answer" in caplog.text and "Traceback" in caplog.text
    assert client.request("temp", "buggy", {"device_id": "nobody", "date": "2026-06-01"})["count"] == 0
    assert not report().restarts and exits.empty()


def test_a_crash_loop_ends_the_process_with_exit_code_1(running, settings, caplog, monkeypatch):
    peers, exits, client = running

    def always_broken(self, batch):
        raise RuntimeError("injected bug: every reading crashes")
    monkeypatch.setattr(IngestActor, "validate", always_broken)
    # Each reading is set aside after 3 failures (the delivery limit), but a bug that every
    # reading meets is a crash loop all the same.
    for i in range(3):
        client.publish("home/temperature", reading("poison", i))
    assert exits.get(timeout=60) == 1
    assert "more than 3 crashes in 60 s" in caplog.text


def test_the_last_resort_exit_does_not_wait_for_a_log_handler_stuck_in_a_write():
    """system.py's stop deadline: with a log handler blocked for good (a stalled disk or pipe,
    its lock held), the process still exits, with its exit code, about half a second later."""
    script = ("import logging, threading, system\n"
              "stuck = threading.Event()\n"
              "class Stuck(logging.Handler):\n"
              "    def emit(self, record):\n"
              "        stuck.set()\n"
              "        threading.Event().wait()\n"
              "logging.getLogger().addHandler(Stuck())\n"
              "threading.Thread(target=logging.getLogger().error, args=('a write that never ends',), daemon=True).start()\n"
              "stuck.wait(10)\n"
              "system._exit_now(3)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert done.returncode == 3, done.stderr
