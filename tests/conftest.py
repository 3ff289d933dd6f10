"""Shared test fixtures: a Mosquitto broker of our own on a free port, the service as a child
process, paho-mqtt clients standing in for devices and apps, and fake actor peers. Every message the
service sends on a test's broker is checked against docs/asyncapi.yaml (Watcher, _contract)."""

from __future__ import annotations

import getpass
import json
import os
import queue
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from functools import cache
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg2
import pykka
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client.parser import text_string_to_metric_families

from scripts.contract import Contract

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = os.environ.get("MOSQUITTO") or shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=15.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Broker:
    """A Mosquitto process on a free loopback port, started and stopped by the test."""

    def __init__(self, workdir: Path, persistence: bool = False, extra: tuple[str, ...] = (), watched: bool = True):
        """`extra`: more configuration lines for the listener, e.g. password_file, acl_file;
        with a password_file anonymous clients are refused. `watched`: what the service sends is
        checked against docs/asyncapi.yaml (not for a device type the document does not describe)."""
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        anonymous = "false" if any(line.startswith("password_file") for line in extra) else "true"
        # `user`: started as root, mosquitto would switch to a user that cannot write here.
        lines = [f"listener {self.port} 127.0.0.1", *extra, f"allow_anonymous {anonymous}", f"user {getpass.getuser()}",
                 "max_queued_messages 200000", "set_tcp_nodelay true", "log_type error", "log_type warning", "log_type notice",
                 f"log_dest file {workdir}/mosquitto-{self.port}.log"]
        if persistence:
            lines += ["persistence true", f"persistence_location {workdir}/", "autosave_interval 1"]
        else:
            lines += ["persistence false"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc = None
        self.watcher: Watcher | None = None
        self.plain = watched and not any(line.split()[0] in ("password_file", "certfile", "cafile")
                                         for line in extra if line.strip())

    @classmethod
    def debian(cls, workdir: Path, drop_ins: dict[str, str]) -> "Broker":
        """A broker laid out as Debian's: a main mosquitto.conf that sets persistence_location and
        includes conf.d/, holding `drop_ins` (file name -> text; `listener 1883` moves to a free port)."""
        broker = cls(workdir)
        conf_d = workdir / "conf.d"
        conf_d.mkdir()
        for name, text in drop_ins.items():
            (conf_d / name).write_text(text.replace("listener 1883 ", f"listener {broker.port} "))
        broker.conf = workdir / "mosquitto.conf"
        broker.conf.write_text(f"persistence true\npersistence_location {workdir}/\nlog_dest stderr\n"
                               f"user {getpass.getuser()}\ninclude_dir {conf_d}\n")
        return broker

    def start(self):
        if not Path(MOSQUITTO).exists():
            pytest.fail(f"mosquitto not found at {MOSQUITTO}; install it: apt-get install -y mosquitto")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.listening, 10, what="mosquitto to listen")
        if self.watcher is None and self.plain:  # it follows the broker through restarts
            self.watcher = Watcher(self.port)

    def listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class FakeClock:
    """A clock the test moves: `clock()` is `clock.now`."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@cache
def contract() -> Contract:
    return Contract()


class Watcher:
    """Keeps every message the service sends on a broker (replies, errors, availability, status,
    stats) for the _contract fixture to check against docs/asyncapi.yaml when the test ends."""
    watching: list[Watcher] = []  # the watchers of the test that runs now

    def __init__(self, port: int):
        self.messages: list[tuple[str, bytes]] = []
        filters = [(pattern.pattern.replace("[^/+#]+", "+").replace("(/.+)?", "/#"), 0)
                   for pattern, _ in contract().channels]
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watcher-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(filters) if not rc.is_failure else c.disconnect()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.reconnect_delay_set(0.1, 1)  # back soon after a test restarts the broker
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        Watcher.watching.append(self)

    def problems(self) -> list[str]:
        self.client.disconnect()
        self.client.loop_stop()
        return [p for topic, payload in self.messages for p in contract().problems(topic, payload)]


@pytest.fixture(autouse=True)
def _contract():
    """Fails a test in which the service sent something docs/asyncapi.yaml does not allow."""
    Watcher.watching.clear()
    yield
    problems = [p for watcher in Watcher.watching for p in watcher.problems()]
    Watcher.watching.clear()
    if problems:
        pytest.fail(f"{len(problems)} messages the service sent are not as docs/asyncapi.yaml says:\n"
                    + "\n".join(problems[:5]), pytrace=False)


class MqttClient:
    """A paho client that plays devices and apps; collects what it receives."""

    def __init__(self, port: int, client_id: str | None = None, username: str | None = None,
                 password: str | None = None):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(100)
        self.messages: queue.Queue = queue.Queue()
        self.client.on_message = lambda c, u, msg: self.messages.put((msg.topic, msg.payload))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self._subscribed = subscribed
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, 1)
        assert self._subscribed.wait(10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload, qos: int = 1, wait: bool = True):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=qos)
        if wait:
            info.wait_for_publish(10)
            assert info.is_published(), f"the broker did not acknowledge a publish to {topic}"
        return info

    def take(self, timeout: float = 10.0):
        """The next message received: (topic, decoded JSON)."""
        topic, payload = self.messages.get(timeout=timeout)
        return topic, json.loads(payload)

    def subscribe_replies(self, app_id: str) -> None:
        for stem in ("temp", "power", "fingerprint", "devices"):
            self.subscribe(f"home/data{stem}/{app_id}")

    def request(self, stem: str, app_id: str, body, timeout: float = 10.0) -> dict:
        self.publish(f"home/get{stem}/{app_id}", body)
        topic, reply = self.take(timeout)
        assert topic == f"home/data{stem}/{app_id}"
        return reply

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class Mqtt5App:
    """An MQTT 5 app (or watcher): asks with a Response Topic, Correlation Data and user
    properties, and collects the messages it receives (paho messages, properties included)."""

    def __init__(self, port: int, app_id: str):
        self.app_id = app_id
        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{app_id}-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self._subscribed: queue.Queue = queue.Queue()
        self.client.on_subscribe = lambda *args: self._subscribed.put(1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def subscribe(self, topic: str) -> None:
        result, _ = self.client.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        self._subscribed.get(timeout=10)

    def ask(self, topic: str, body, response_topic=None, correlation=None, user=()) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
        if correlation is not None:
            props.CorrelationData = correlation
        if user:
            props.UserProperty = list(user)
        payload = body if isinstance(body, bytes) else json.dumps(body)
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(10)

    def take(self, timeout: float = 10.0, skip_status: bool = True):
        """The next message, past the service's retained status unless asked for."""
        message = self.messages.get(timeout=timeout)
        while skip_status and message.topic.startswith("home/status/"):
            message = self.messages.get(timeout=timeout)
        return message

    def drain(self) -> list:
        out = []
        while not self.messages.empty():
            out.append(self.messages.get())
        return out

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class FakeSystemd:
    """systemd's notify socket, as a test's: what the service says (READY=1, WATCHDOG=1, STOPPING=1),
    in order. An abstract socket, so that no path length limit applies."""

    def __init__(self):
        self.address = f"@mqtt-client-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.2)
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

    def states(self) -> list[str]:
        return [state for _, state in self.received]

    def last(self, state: str) -> float | None:
        times = [t for t, s in self.received if s == state]
        return times[-1] if times else None

    def close(self):
        self._open = False
        self.sock.close()


class Service:
    """`python system.py` as a child process, configured by environment variables, with a
    notify socket of its own standing in for systemd's (`systemd`)."""

    def __init__(self, broker: Broker, workdir: Path, **env):
        self.broker = broker
        self.workdir = workdir
        self.db_path = workdir / "mqtt_data.db"
        self.log_path = workdir / "mqtt_client.log"
        self.output = workdir / "service.out"
        self.client_id = f"svc-{uuid.uuid4().hex[:8]}"
        self.extra_env = env
        self.script = "system.py"  # or a wrapper around it (tests/faults/slow_service.py)
        self.proc = None
        self.systemd: FakeSystemd | None = None

    def start(self, *args):
        inherited = {k: v for k, v in os.environ.items() if k not in ("MQTT_USERNAME", "MQTT_PASSWORD")}
        env = {**inherited, "MQTT_BROKER_HOST": "127.0.0.1", "MQTT_BROKER_PORT": str(self.broker.port),
               "MQTT_CLIENT_ID": self.client_id, "DATABASE_PATH": str(self.db_path),
               "LOG_FILE": str(self.log_path), "LOG_LEVEL": "INFO", **self.extra_env}
        if self.systemd is not None:
            self.systemd.close()
        self.systemd = FakeSystemd()  # each run's own
        env["NOTIFY_SOCKET"] = self.systemd.address
        self.env = env
        with open(self.output, "wb") as out:  # each run's output on its own
            self.proc = subprocess.Popen([sys.executable, self.script, *args], cwd=ROOT, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)
        return self

    def serve_metrics(self) -> Service:
        """Have the service serve /metrics (METRICS_LISTEN on a free port), for metric()."""
        self.extra_env["METRICS_LISTEN"] = f"127.0.0.1:{free_port()}"
        return self

    def metric(self, name: str, **labels) -> float | None:
        """One number of the service's /metrics now (see serve_metrics), None while there is none:
        what a test waits on rather than the wording of a log line. The numbers are at most
        metrics.REFRESH (5 s) old."""
        try:
            with urllib.request.urlopen(f"http://{self.extra_env['METRICS_LISTEN']}/metrics", timeout=5) as reply:
                text = reply.read().decode()
        except OSError:
            return None
        wanted = sorted(labels.items())
        return next((s.value for family in text_string_to_metric_families(text) for s in family.samples
                     if s.name == name and sorted(s.labels.items()) == wanted), None)

    def wait_ready(self):
        """Until the service has told systemd READY=1: its database is open and it is subscribed."""
        wait_until(lambda: "READY=1" in self.systemd.states() or self.proc.poll() is not None, 30,
                   what="the service to be ready")
        assert self.proc.poll() is None, f"the service exited:\n{self.log()}"

    def wait_online(self, connections: int):
        """Until the service's retained status says it is subscribed on its `connections`-th
        connection to the broker (reconnected `connections - 1` times) in this run."""
        wait_until(lambda: (s := self.status()) is not None and s["state"] == "online"
                   and s["connections"] >= connections or self.proc.poll() is not None, 60,
                   what=f"the service online on connection {connections}")
        assert self.proc.poll() is None, f"the service exited:\n{self.log()}"

    def status(self) -> dict | None:
        """The retained home/status/{client_id} as the broker has it now (None: none, or no broker)."""
        watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        got = queue.Queue()
        watcher.on_message = lambda c, u, m: got.put(m.payload)
        try:
            watcher.connect("127.0.0.1", self.broker.port)
        except OSError:
            return None
        watcher.loop_start()
        try:
            watcher.subscribe(f"home/status/{self.client_id}", qos=1)
            payload = got.get(timeout=1)
            return json.loads(payload) if payload else None
        except queue.Empty:
            return None
        finally:
            watcher.loop_stop()
            watcher.disconnect()

    def log(self) -> str:
        try:
            return self.output.read_text(errors="replace")
        except OSError:
            return ""

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory so far (VmHWM)."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024

    def terminate(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def query(self, sql: str, params=()) -> list[tuple]:
        """SQL with ? parameters, on the SQLite file or, with DATABASE_URL, on PostgreSQL."""
        url = self.extra_env.get("DATABASE_URL")
        if url:
            with psycopg2.connect(url) as con, con.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), params)
                return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                        for row in cursor.fetchall()] if cursor.description else []
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def stop_quietly(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.systemd is not None:
            self.systemd.close()


class FakePeer:
    """Stands in for any actor or the MQTT link: records what it is told."""

    def __init__(self):
        self.inbox: queue.Queue = queue.Queue()

    def tell(self, message):
        self.inbox.put(message)

    def is_alive(self) -> bool:
        return True

    def next(self, timeout: float = 10.0):
        return self.inbox.get(timeout=timeout)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_url():
    """A new, empty PostgreSQL database for one test, dropped after it. Without a server the test
    is skipped, unless REQUIRE_POSTGRES is set (CI), where it fails."""
    try:
        admin = psycopg2.connect(POSTGRES, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        message = f"no PostgreSQL at {POSTGRES} (TEST_POSTGRES_URL): {str(exc).strip()}"
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    admin.autocommit = True
    name = f"mqtt_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    yield POSTGRES.rsplit("/", 1)[0] + "/" + name
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request):
    """For tests that run on both databases: the service's environment for each."""
    return {} if request.param == "sqlite" else {"DATABASE_URL": request.getfixturevalue("pg_url")}


@pytest.fixture
def db_service(broker, tmp_path, database_env):
    """The service on SQLite, then on PostgreSQL: each test that takes it runs twice."""
    s = Service(broker, tmp_path, **database_env)
    yield s
    s.stop_quietly()


@pytest.fixture
def service(broker, tmp_path):
    s = Service(broker, tmp_path)
    yield s
    s.stop_quietly()


@pytest.fixture
def client(broker):
    c = MqttClient(broker.port)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _stop_actors():
    yield
    pykka.ActorRegistry.stop_all(timeout=10)
