#!/usr/bin/env python3
"""Benchmark: the service side by side with a bare-minimum subscriber, on one machine, in one run.

    .venv/bin/python scripts/benchmark.py                 # everything (a few minutes)
    .venv/bin/python scripts/benchmark.py --rows 500000   # a smaller database for the reply part
    .venv/bin/python scripts/benchmark.py --fleet-only    # only the fleet part (about 2 minutes)

It starts its own Mosquitto with deploy/mosquitto/mqtt-client.conf's settings and fresh databases, then:
1. ingest: --readings QoS 1 readings sent as fast as possible (scripts/simulate_devices.py,
   which verifies every one) to the service, then to a baseline subscriber: gmqtt acknowledging
   on receipt, sqlite3 executemany, a commit every 500 rows or 50 ms, synchronous=NORMAL;
   stored/s from the first publish to the last commit, and CPU per 100,000 readings;
2. replies: a database of --rows rows written directly, --apps apps asking for random device-days
   of 1,440 readings (about one request per app per second): p50/p99 request->reply (the first
   page when a day is over queries.max_reply_bytes); one device-day of 86,400 readings, paged:
   the first reply, and all pages one after the other; the catalogue of over 1,000 devices, and
   summaries of a year of readings (31 days by the hour, 366 by the day): medians, all pages;
3. peak RSS during ingest, and the time from start to the first reply on the big database;
4. retention on that database: the service restarted with a retention that expires about half
   of it (archived, then deleted) while a device sends 100 QoS 1 readings/s; the longest delete
   transaction, and the longest any reading waited for its acknowledgement during the pass.
5. with --postgres ADMIN_URL: ingest into PostgreSQL by one instance, then by two in one shared
   subscription group (fresh databases, dropped after).
6. a burst (--burst, 60,000) from a raw-socket QoS 1 publisher that costs almost nothing per
   message, so that the consumer sets the pace: the service against the baseline above, with the
   publisher's own rate and CPU (with --compare-with COMMIT, also against the service at COMMIT,
   e.g. without the catalogue and rollups: 9871c56);
7. steady rates (--steady, default 10, 100 and 1,000 readings/s, each for --steady-seconds): CPU
   per reading of the service, of the baseline above (the ceiling: no guarantees) and of a durable
   baseline (paho, a commit with synchronous=FULL per natural group, acknowledging after it), each
   started afresh; and the service's CPU while idle.
8. a fleet (--fleet-only: this part alone), on a Mosquitto with its default Receive Maximum (20):
   --fleet (20,000) new devices with a reading each in a burst, against as many readings of one
   device, every device announced, then all of them stale at once while --apps apps ask; --known
   (100,000) devices in the catalogue against an empty one (peak RSS, CPU per reading); --power-hour (20,000)
   events in one power device-hour, then CPU per further event against a temperature reading's
   (and per late event); 100 readings/s of the three types mixed against the durable baseline.
Prints one table."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import itertools
import json
import os
import platform
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import simulate_devices as sim  # noqa: E402

from actors.devices import BUILTIN_TYPES as DEVICE_TYPES  # noqa: E402
from actors.mqtt.client import remaining_length  # noqa: E402
from actors.storage.models import insert_sql, open_database  # noqa: E402
from actors.storage.rollups import Upkeep  # noqa: E402
from actors.storage.schema import prepare  # noqa: E402

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise SystemExit(f"benchmark: timed out waiting for {what}")


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads, to the nanosecond (schedstat): /proc/PID/stat counts in
    ticks of 10 ms, a tenth of what a trickle of 10 readings/s costs in 20 s. (A thread that ended
    meanwhile is not counted: the consumers measured keep theirs.)"""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended just now
    if not total:  # a kernel without schedstat
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total / 1e9


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


class Mosquitto:
    def __init__(self, workdir: Path, inflight: int | None = None):
        """`inflight`: the broker's max_inflight_messages (its Receive Maximum), instead of ours."""
        self.port = free_port()
        conf = (ROOT / "deploy" / "mosquitto" / "mqtt-client.conf").read_text().replace("listener 1883 ", f"listener {self.port} ")
        if inflight is not None:
            conf = re.sub(r"(?m)^max_inflight_messages .*$", f"max_inflight_messages {inflight}", conf)
        conf += f"\npersistence_location {workdir}/\nuser {getpass.getuser()}\n"
        path = workdir / "mosquitto.conf"
        path.write_text(conf)
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._listening, 10, "mosquitto")

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self):
        self.proc.kill()  # nothing needs its saved sessions (saving them can take longer than a part)
        self.proc.wait()


def start(cmd: list[str], env: dict, output: Path, ready: str, cwd: Path = ROOT) -> subprocess.Popen:
    with open(output, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: ready in output.read_text(errors="replace") or proc.poll() is not None, 60, ready)
    if proc.poll() is not None:
        raise SystemExit(f"benchmark: {cmd} exited:\n{output.read_text()}")
    return proc


def fresh_broker(old: Mosquitto, directory: Path) -> Mosquitto:
    old.stop()
    directory.mkdir()
    return Mosquitto(directory)


def service_env(port: int, db: Path) -> dict:
    return {"MQTT_BROKER_HOST": "127.0.0.1", "MQTT_BROKER_PORT": str(port), "DATABASE_PATH": str(db),
            "MQTT_CLIENT_ID": f"bench-{random.randrange(10**6)}", "LOG_FILE": "", "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO")}


def ingest(name: str, proc: subprocess.Popen, port: int, db: Path, readings: int) -> dict:
    """Send `readings` as fast as possible; the simulator verifies every one was stored."""
    before = cpu_seconds(proc.pid)
    result = subprocess.run([PYTHON, "scripts/simulate_devices.py", "--quiet", "--port", str(port),
                             "--count", str(readings), "--devices", "10", "--verify", str(db)],
                            cwd=ROOT, capture_output=True, text=True)
    cpu = cpu_seconds(proc.pid) - before
    if result.returncode != 0:
        raise SystemExit(f"benchmark: {name} did not store every reading:\n{result.stdout}{result.stderr}")
    rate = float(re.search(r"([\d,]+) per second", result.stdout).group(1).replace(",", ""))
    return {"rate": rate, "cpu_per_100k": cpu * 100_000 / readings, "peak_rss": peak_rss_mib(proc.pid)}


# -- the baseline: the least a Python subscriber can do -----------------------------------------

BASELINE_TABLES = {
    "home/temperature": ("temperature_logs", ("device_id", "temperature", "humidity", "status", "timestamp", "date")),
    "home/power": ("power_status_logs", ("device_id", "ebstatus", "dgstatus", "timestamp", "date")),
    "home/fingerprint": ("fingerprint_logs", ("device_id", "user_id", "auth_status", "timestamp", "date")),
}


def baseline_row(topic: str, r: dict) -> tuple:
    ts = r["timestamp"]
    if topic == "home/temperature":
        return r["device_id"], r["temperature"], r["humidity"], r["status"], ts, ts[:10]
    if topic == "home/power":
        source, state = r["status"].split("_")
        return r["device_id"], state if source == "EB" else "", state if source == "DG" else "", ts, ts[:10]
    return r["device_id"], r["user_id"], r["authStatus"], ts, ts[:10]


def baseline_database(path: str, synchronous: str, day_index: bool) -> tuple[sqlite3.Connection, dict[str, str]]:
    """A baseline's database (WAL, the readings' tables) and its INSERT per reading topic."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = wal")
    db.execute(f"PRAGMA synchronous = {synchronous}")
    for table, columns in BASELINE_TABLES.values():
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, {', '.join(columns)})")
        if day_index:
            db.execute(f"CREATE INDEX IF NOT EXISTS {table}_day ON {table} (device_id, date, timestamp)")
    return db, {topic: f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})"
                for topic, (t, c) in BASELINE_TABLES.items()}


def baseline_subscriber(port: int, db_path: str) -> None:
    """gmqtt acknowledging on receipt (its default), rows into sqlite3 with executemany,
    a commit every 500 rows or 50 ms, WAL with synchronous=NORMAL."""
    import gmqtt
    import orjson

    db, sql = baseline_database(db_path, "normal", day_index=True)
    db.execute("CREATE TABLE IF NOT EXISTS rejected_messages (id INTEGER PRIMARY KEY, payload BLOB)")
    pending: dict[str, list] = {topic: [] for topic in BASELINE_TABLES}
    count = 0

    def commit():
        nonlocal count
        db.execute("BEGIN")
        for topic, rows in pending.items():
            if rows:
                db.executemany(sql[topic], rows)
                rows.clear()
        db.execute("COMMIT")
        count = 0

    def on_message(client, topic, payload, qos, properties):
        nonlocal count
        pending[topic].append(baseline_row(topic, orjson.loads(payload)))
        count += 1
        if count >= 500:
            commit()

    async def main():
        client = gmqtt.Client(f"baseline-{random.randrange(10**6)}")
        client.on_message = on_message
        client.on_connect = lambda c, *a: c.subscribe([gmqtt.Subscription(t, qos=1) for t in BASELINE_TABLES])
        client.on_subscribe = lambda *a: print("baseline subscribed", flush=True)
        await client.connect("127.0.0.1", port)
        while True:
            await asyncio.sleep(0.05)
            if count:
                commit()

    asyncio.run(main())


def durable_subscriber(port: int, db_path: str) -> None:
    """paho acknowledging after the commit: each natural group (what arrived while the last commit
    ran) in one transaction with synchronous=FULL (an fsync per commit), then its PUBACKs."""
    import orjson
    import paho.mqtt.client as mqtt

    db, sql = baseline_database(db_path, "full", day_index=False)
    arrived, pending = threading.Condition(), []

    def on_message(client, userdata, message):
        with arrived:
            pending.append(message)
            arrived.notify()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"durable-{random.randrange(10**6)}",
                         protocol=mqtt.MQTTv5, manual_ack=True)
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in BASELINE_TABLES])
    client.on_subscribe = lambda *a: print("baseline subscribed", flush=True)
    client.connect("127.0.0.1", port)
    client.loop_start()
    while True:
        with arrived:
            while not pending:
                arrived.wait()
            group = pending[:]
            pending.clear()
        db.execute("BEGIN")
        for m in group:
            db.execute(sql[m.topic], baseline_row(m.topic, orjson.loads(m.payload)))
        db.execute("COMMIT")
        for m in group:
            client.ack(m.mid, 1)


def payload_of(kind: str, i: int, devices: int) -> tuple[bytes, bytes]:
    """The i-th reading of a raw publisher: (topic, payload). Temperature: device i % devices, at
    second i of a day of July; power: one device, an event every 100 ms from 10:00 of 2026-07-01 (an
    hour holds 36,000), in order; power-late: 50 ms after each of those, so before the hour's last."""
    if kind.startswith("power"):
        late = b"5" if kind == "power-late" else b"0"
        return b"home/power", (b'{"device_id":"burst-power","status":"%s","timestamp":"2026-07-01T10:%02d:%02d.%01d%s0000"}'
                               % ((b"EB_ON", b"EB_OFF", b"DG_ON", b"DG_OFF")[i % 4], i // 600 % 60, i // 10 % 60, i % 10,
                                  late))
    second = i % 86_400
    return b"home/temperature", (b'{"device_id":"burst-%d","temperature":%.1f,"humidity":50.0,"status":"LOW",'
                                 b'"timestamp":"2026-07-%02dT%02d:%02d:%02d"}'
                                 % (i % devices, 20 + i % 10, 1 + i // 86_400 % 28, second // 3600, second // 60 % 60,
                                    second % 60))


def raw_publisher(port: int, count: int, devices: int = 10, kind: str = "temperature", first: int = 0) -> None:
    """A QoS 1 load generator that costs almost nothing per message and per acknowledgement: MQTT
    3.1.1 over a raw socket, every PUBLISH written as fast as the socket takes it, PUBACKs read
    on the side. Prints its rate (all acknowledged) and its own CPU as JSON. Readings `first` to
    `first + count` of payload_of's."""
    import selectors
    sock = socket.create_connection(("127.0.0.1", port))
    client_id = f"burst-{random.randrange(10**6)}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client_id).to_bytes(2, "big") + client_id
    sock.sendall(b"\x10" + remaining_length(len(body)) + body)
    if sock.recv(4)[:2] != b"\x20\x02":
        raise SystemExit("benchmark: the broker refused the publisher")
    packets = []
    for i in range(count):
        topic, payload = payload_of(kind, first + i, devices)
        rest = len(topic).to_bytes(2, "big") + topic + (i % 65535 + 1).to_bytes(2, "big") + payload
        packets.append(b"\x32" + remaining_length(len(rest)) + rest)
    started_cpu = time.process_time()  # what it costs to send them, not to make them
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    out, acked, inbuf, sent = b"".join(packets), 0, b"", 0
    ends = list(itertools.accumulate(len(packet) for packet in packets))  # where each packet ends in `out`
    window = 60_000  # unacknowledged at most: packet ids repeat every 65,535
    started = time.perf_counter()
    while acked < count:
        limit = ends[min(count, acked + window) - 1]
        for _, events in selector.select():
            if events & selectors.EVENT_WRITE and sent < limit:
                sent += sock.send(out[sent:min(limit, sent + (1 << 20))])
                if sent == limit:
                    selector.modify(sock, selectors.EVENT_READ)
            if events & selectors.EVENT_READ:
                inbuf += sock.recv(1 << 16)
                acked += len(inbuf) // 4
                inbuf = inbuf[len(inbuf) // 4 * 4:]
                if sent < len(out) and sent < ends[min(count, acked + window) - 1]:
                    selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    elapsed = time.perf_counter() - started
    sock.close()
    print(json.dumps({"rate": count / elapsed, "cpu": time.process_time() - started_cpu}), flush=True)


def burst(name: str, proc: subprocess.Popen, port: int, db: Path, readings: int, devices: int = 10,
          kind: str = "temperature", first: int = 0) -> dict:
    """`readings` handed to the broker by raw_publisher (in its own process) as fast as it takes
    them: stored/s from the start to the last row, the consumer's CPU per 100,000, and the
    publisher's own rate and CPU."""
    table = "power_status_logs" if kind.startswith("power") else "temperature_logs"
    stored_before = stored_rows(db, table)
    before, started = cpu_seconds(proc.pid), time.perf_counter()
    published = subprocess.run([PYTHON, __file__, "--raw-publisher", str(port), str(readings), str(devices), kind,
                                str(first)], cwd=ROOT, capture_output=True, text=True)
    if published.returncode != 0:
        raise SystemExit(f"benchmark: the publisher failed:\n{published.stdout}{published.stderr}")
    wait_for(lambda: stored_rows(db, table) - stored_before >= readings, 300, f"{readings} readings stored by the {name}")
    elapsed, cpu = time.perf_counter() - started, cpu_seconds(proc.pid) - before
    if (stored := stored_rows(db, table) - stored_before) != readings:
        raise SystemExit(f"benchmark: the {name} stored {stored} of {readings} readings")
    publisher = json.loads(published.stdout)
    return {"rate": readings / elapsed, "cpu_per_100k": cpu * 100_000 / readings, "published": publisher["rate"],
            "publisher_cpu": publisher["cpu"]}


# -- steady rates: what a trickle of readings costs -----------------------------------------------

def mixed_reading(i: int) -> tuple[str, str]:
    """The seed's three types in turn, from 10 devices each, stamped with the current time."""
    now, device = datetime.now().isoformat(timespec="microseconds"), f"steady-{i // 3 % 10}"
    if i % 3 == 0:
        return "home/temperature", json.dumps({"device_id": device, "temperature": 20.0 + i % 10, "humidity": 50.0,
                                               "status": "LOW", "timestamp": now})
    if i % 3 == 1:
        return "home/power", json.dumps({"device_id": device, "status": ("EB_ON", "EB_OFF", "DG_ON", "DG_OFF")[i % 4],
                                         "timestamp": now})
    return "home/fingerprint", json.dumps({"device_id": device, "user_id": f"u{i % 7}", "authStatus": "PASS",
                                           "timestamp": now})


def publish_steadily(port: int, rate: float, count: int, mixed: bool = False) -> None:
    """`count` QoS 1 temperature readings at `rate` per second (one gmqtt client; cheap per message);
    `mixed`: the three types in turn, at the current time (mixed_reading)."""
    async def run():
        args = argparse.Namespace(host="127.0.0.1", port=port, username=None, password=None)
        client, _ = await sim.connect(args, f"steady-{random.randrange(10**6)}")
        started = time.perf_counter()
        for i in range(count):
            if (delay := started + i / rate - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            second = i % 86_400
            topic, payload = mixed_reading(i) if mixed else ("home/temperature", json.dumps({
                "device_id": f"steady-{i % 10}", "temperature": 20.0 + i % 10, "humidity": 50.0, "status": "LOW",
                "timestamp": f"2026-05-{1 + i // 86_400:02d}T{second // 3600:02d}:{second // 60 % 60:02d}:"
                             f"{second % 60:02d}"}))
            while True:
                try:
                    client.publish(topic, payload, qos=1)
                    break
                except OverflowError:  # gmqtt's 65,535 packet ids are all awaiting PUBACKs: let some come
                    await asyncio.sleep(0.01)
        await client.disconnect()
    asyncio.run(run())


def stored_rows(db: Path, table: str = "temperature_logs") -> int:
    """Rows of `table`; "all": of the three reading tables."""
    tables = BASELINE_TABLES.values() if table == "all" else [(table, ())]
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return sum(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t, _ in tables)
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet
        return 0


# #16's targets at steady rates: CPU per reading as a share of the durable baseline's, and of a core
RATIO_TARGETS = {100: " (target ≤ 0.5)"}
CORE_TARGETS = {10: " (target ≤ 0.5%)"}


def steady(port: int, workdir: Path, rates: list[float], seconds: float, mixed: bool = False,
           names=("service", "durable", "ceiling")) -> dict:
    """At each rate, for `seconds`: CPU per reading of the service and of both baselines (`names`),
    each consumer started afresh on its own database (and the service's CPU while idle); `mixed`:
    the seed's three types at the current time (publish_steadily)."""
    consumers = {
        "service": lambda db, out: start([PYTHON, "system.py"], service_env(port, db), out,
                                         "taking readings and requests"),
        "durable": lambda db, out: start([PYTHON, __file__, "--durable-subscriber", str(port), str(db)], {}, out,
                                         "baseline subscribed"),
        "ceiling": lambda db, out: start([PYTHON, __file__, "--baseline-subscriber", str(port), str(db)], {}, out,
                                         "baseline subscribed"),
    }
    consumers = {name: launch for name, launch in consumers.items() if name in names}
    results: dict = {name: {} for name in consumers}
    kind = "mixed" if mixed else "temperature"
    for rate in rates:
        count = max(1, int(rate * seconds))
        for name, launch in consumers.items():
            db = workdir / f"steady-{kind}-{name}-{rate:g}.db"
            proc = launch(db, workdir / f"steady-{kind}-{name}-{rate:g}.out")
            try:
                if name == "service" and "idle" not in results:
                    before = cpu_seconds(proc.pid)
                    time.sleep(seconds)  # the measurement itself: CPU over an idle window
                    results["idle"] = (cpu_seconds(proc.pid) - before) / seconds
                print(f"steady: {count:,} {kind} readings at {rate:g}/s into the {name} consumer ...", flush=True)
                before = cpu_seconds(proc.pid)
                publish_steadily(port, rate, count, mixed)
                wait_for(lambda: stored_rows(db, "all") >= count, 60, f"{count} readings stored by the {name} consumer")
                results[name][rate] = (cpu_seconds(proc.pid) - before) / count
            finally:
                proc.kill()
                proc.wait()
    return results


# -- a fleet: many devices at once, many known, a full power hour, the three types mixed ----------

class States(threading.Thread):
    """The latest availability state of each device as the broker delivers it, and when the last
    stale one came."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        super().__init__(daemon=True)
        self.states: dict[str, str] = {}
        self.last_stale = 0.0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.loop_start()
        self.client.subscribe("home/availability/#", qos=1)
        subscribed.wait(10)

    def _on_message(self, client, userdata, message):
        state = json.loads(message.payload)["state"]
        self.states[message.topic] = state
        if state == "stale":
            self.last_stale = time.perf_counter()

    def count(self, state: str | None = None) -> int:
        return sum(state is None or s == state for s in list(self.states.values()))

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def link_errors(output: Path) -> int:
    text = output.read_text(errors="replace")
    return text.count("MQTT link failed") + text.count("crashed")


def known_database(path: Path, devices: int) -> None:
    """A database whose catalogue knows `devices` temperature devices (burst-0 ...), heard just now."""
    db = open_database(str(path), 5)
    prepare(db)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    with db.atomic():
        db.connection().executemany(
            "INSERT INTO devices (type, device_id, first_seen, last_seen, received_at, readings, clock_rejected, state) "
            "VALUES ('temperature', ?, '2026-06-30T00:00:00', '2026-06-30T00:00:00', ?, 1, 0, 'live')",
            ((f"burst-{n}", now) for n in range(devices)))
    db.close()


def fleet(workdir: Path, new: int, known: int, apps: int, seconds: float, rounds: int = 3, hour: int = 20_000) -> dict:
    """#23's rows, on a Mosquitto with its default Receive Maximum (20):
    a. `new` new devices, one reading each, in a burst, against as many readings of one device;
       every device's `live` delivered, then all of them `stale` at once (stale_after 10 s), with
       `apps` apps asking meanwhile;
    b. `known` devices in the catalogue: RSS and CPU per reading against an empty catalogue, the
       same readings (of 10 devices) into each; and a reading from every known device;
    c. `hour` events in one power device-hour: CPU per further event against a temperature reading's;
    d. 100 readings/s of the three types mixed, at the current time, against the durable baseline."""
    result: dict = {}
    broker = None
    try:
        def service(name: str, db: Path, stale_after: float):
            """The service on a broker of its own (a stopped one's session would queue what comes after)."""
            nonlocal broker
            if broker is not None:
                broker.stop()
            (workdir / name).mkdir()
            broker = Mosquitto(workdir / name, inflight=20)
            config = workdir / f"fleet-{name}.toml"
            config.write_text(f"[devices]\ntemperature_stale_after = {stale_after}\n")
            output = workdir / f"fleet-{name}.out"
            return start([PYTHON, "system.py", "--config", str(config)], service_env(broker.port, db), output,
                         "taking readings and requests"), output

        bursts: dict[str, list[dict]] = {}
        for round_, (name, devices) in itertools.product(range(rounds), (("one", 1), ("new", new))):
            print(f"fleet: {new:,} readings from {devices:,} device{'s' if devices > 1 else ''} ...", flush=True)
            db = workdir / f"fleet-{name}-{round_}.db"
            proc, output = service(f"{name}-{round_}", db, 10)
            states = States(broker.port)
            try:
                bursts.setdefault(name, []).append(burst(f"service ({name})", proc, broker.port, db, new, devices))
                if devices == 1 or round_ < rounds - 1:
                    continue  # the mass stale after the last burst of new devices
                wait_for(lambda: states.count() >= new, 60, f"{new} devices announced")
                result["announced"], silent = states.count(), time.perf_counter()
                print(f"fleet: {new:,} devices falling stale (10 s) while {apps} apps ask ...", flush=True)

                async def ask():
                    done = asyncio.Event()
                    loop = asyncio.get_running_loop()
                    loop.call_later(seconds, done.set)
                    args = argparse.Namespace(host="127.0.0.1", port=broker.port, username=None, password=None, seed=2)
                    return await sim.run_apps(args, apps, lambda: ("temperature", f"burst-{random.randrange(new)}",
                                                                   "2026-07-01"), done)
                report = asyncio.run(ask())
                wait_for(lambda: states.count("stale") >= new, 120, f"{new} devices announced stale")
                result["stale_delivered"] = states.last_stale - (silent + 10)
                result["apps"] = report
                result["link_errors"] = link_errors(output)
                if report.problems:
                    raise SystemExit("benchmark: wrong or missing replies:\n" + "\n".join(report.problems[:10]))
            finally:
                states.close()
                proc.kill()
                proc.wait()
        for name, measured in bursts.items():
            result[name] = {k: median(sorted(m[k] for m in measured)) for k in measured[0]}

        # the same traffic (10 devices) with the catalogue empty and knowing `known` devices,
        # alternately (medians of `rounds`); then every known device sending a reading
        runs: dict[str, list[dict]] = {}
        for round_, (name, devices) in itertools.product(range(rounds), (("empty", 10), ("known", 10),
                                                                           ("each", known))):
            if name == "each" and round_:
                continue
            print(f"fleet: {known:,} readings from {devices:,} devices, the catalogue "
                  f"{'empty' if name == 'empty' else f'knowing {known:,}'} ...", flush=True)
            db = workdir / f"fleet-{name}-{round_}.db"
            if name != "empty":
                known_database(db, known)
            proc, output = service(f"{name}-{round_}", db, 3600)
            try:
                runs.setdefault(name, []).append(burst(f"service ({name})", proc, broker.port, db, known, devices))
                runs[name][-1]["rss"] = peak_rss_mib(proc.pid)
            finally:
                proc.kill()
                proc.wait()
        for name, measured in runs.items():
            result[name] = {k: median(sorted(m[k] for m in measured)) for k in measured[0]}

        print(f"fleet: {hour:,} events in one power device-hour, then {hour // 4:,} more, as many temperature "
              "readings and 500 late events ...", flush=True)
        db = workdir / "fleet-power.db"
        proc, output = service("power", db, 3600)
        try:
            burst("service (power hour)", proc, broker.port, db, hour, 1, "power")
            result["power"] = burst("service (power)", proc, broker.port, db, hour // 4, 1, "power", hour)
            result["temperature"] = burst("service (temperature)", proc, broker.port, db, hour // 4, 10)
            result["late"] = burst("service (late power)", proc, broker.port, db, 500, 1, "power-late", 0)
        finally:
            proc.kill()
            proc.wait()
    finally:
        if broker is not None:
            broker.stop()
    (workdir / "mixed").mkdir()
    broker = Mosquitto(workdir / "mixed")
    try:
        result["mixed"] = steady(broker.port, workdir, [100], seconds, mixed=True, names=("service", "durable"))
    finally:
        broker.stop()
    return result


def fleet_rows(f: dict, new: int, known: int, apps: int, hour: int) -> list[tuple]:
    one, many, r = f["one"], f["new"], f["apps"]
    return [
        (f"fleet: {new:,} new devices, readings stored/s", f"{many['rate']:,.0f}", f"{one['rate']:,.0f}",
         f"ratio {many['rate'] / one['rate']:.2f} to {new:,} readings of one device (target ≥ 0.9; medians); "
         f"{f['announced']:,} announced; link errors {f['link_errors']}"),
        (f"fleet: all {new:,} stale at once, last delivered", f"{f['stale_delivered']:.1f} s", "",
         "after the last fell due (target ≤ 60 s)"),
        (f"fleet: {apps} apps meanwhile, p50 / p99", f"{ms(r.percentile(0.5))} / {ms(r.percentile(0.99))}", "",
         f"{r.asked:,} requests (target p99 ≤ 50 ms)"),
        (f"fleet: {known:,} known devices, peak RSS", f"{f['known']['rss']:.0f} MiB", f"{f['empty']['rss']:.0f} MiB",
         f"growth {f['known']['rss'] - f['empty']['rss']:.0f} MiB over an empty catalogue (target ≤ 50 MiB)"),
        (f"fleet: {known:,} known devices, CPU s per 100,000", f"{f['known']['cpu_per_100k']:.2f}",
         f"{f['empty']['cpu_per_100k']:.2f}",
         f"ratio {f['known']['cpu_per_100k'] / f['empty']['cpu_per_100k']:.2f} to 10 known devices, the same "
         f"readings of 10 devices (target ≤ 1.2; medians)"),
        (f"fleet: a reading from each of {known:,} known devices", f"{f['each']['cpu_per_100k']:.2f}",
         f"{f['empty']['cpu_per_100k']:.2f}",
         f"ratio {f['each']['cpu_per_100k'] / f['empty']['cpu_per_100k']:.2f} to readings of 10 devices (a catalogue "
         f"row and a rollup row per reading, not per commit)"),
        (f"power hour of {hour:,} events: CPU s per 100,000 more", f"{f['power']['cpu_per_100k']:.2f}",
         f"{f['temperature']['cpu_per_100k']:.2f}",
         f"ratio {f['power']['cpu_per_100k'] / f['temperature']['cpu_per_100k']:.2f} to temperature readings "
         f"(target ≤ 1.5); a late event: {f['late']['cpu_per_100k'] / 1e5 * 1000:.1f} ms each (500)"),
        ("steady 100/s, three types mixed, CPU ms per reading", f"{f['mixed']['service'][100] * 1000:.2f}",
         f"{f['mixed']['durable'][100] * 1000:.2f}",
         f"ratio {f['mixed']['service'][100] / f['mixed']['durable'][100]:.2f} to the durable baseline (target ≤ 0.5)"),
    ]


# -- replies on a big database ------------------------------------------------------------------

SUMMARY_TARGETS = {"device catalogue": 50, "31-day hourly summary": 20, "366-day daily summary": 30,
                   "366-day daily power summary": 30}
YEAR = ("2025-03-01", "2026-03-01")  # 366 days of one device, every 10 minutes: the summary part
CATALOGUE_DEVICES = 1_000  # devices with a reading or two each, besides the others: the catalogue part


def build_big_database(path: Path, rows: int) -> tuple[list[tuple[str, str]], tuple[str, str]]:
    """`rows` temperature readings: device-days of 1,440 (one a minute) and one of 86,400 (one a
    second); a year of readings of one temperature and one power device (YEAR); CATALOGUE_DEVICES
    devices more. Stored as the service stores them, with the catalogue and the rollups (so the
    service has nothing to build at its start). Returns the 1,440-reading device-days and the big one."""
    db = open_database(str(path), 5)
    db.connect()
    prepare(db)
    upkeep = Upkeep(db)
    inserts = {name: insert_sql(d.model, db) for name, d in DEVICE_TYPES.items()}
    conn = db.connection()
    rng = random.Random(5)
    start = date(2026, 1, 1)
    days = []
    big = ("bench-busy", "2026-03-01")
    stored_at = "2026-03-02 00:00:00"

    def store(kind: str, rows: list[tuple]) -> None:
        rows = [(*row, stored_at) for row in rows]
        conn.executemany(inserts[kind], rows)
        upkeep.stored(conn, {kind: rows}, {}, stored_at)

    def day_rows(device, day, per_day):
        step = 86400 // per_day
        midnight = datetime.combine(day, datetime.min.time())
        for i in range(per_day):
            ts = (midnight + timedelta(seconds=i * step)).isoformat()
            yield device, round(rng.uniform(15, 35), 1), round(rng.uniform(30, 70), 1), rng.choice(("LOW", "HIGH")), \
                ts, ts[:10]

    conn.execute("PRAGMA synchronous = off")
    conn.execute("BEGIN")
    store("temperature", list(day_rows(big[0], date.fromisoformat(big[1]), 86_400)))
    n_days = max(1, (rows - 86_400) // 1_440)
    devices = max(1, n_days // 60)
    for k in range(n_days):
        device, day = f"bench-{k % devices:04d}", start + timedelta(days=k // devices)
        store("temperature", list(day_rows(device, day, 1_440)))
        days.append((device, day.isoformat()))
    first = date.fromisoformat(YEAR[0])
    for k in range(366):
        day = first + timedelta(days=k)
        store("temperature", list(day_rows("bench-year", day, 144)))
        events = {(f"{day}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00",
                   rng.choice((("ON", ""), ("OFF", ""), ("", "ON"), ("", "OFF")))) for _ in range(8)}
        store("power", [("bench-year-power", *values, ts, ts[:10]) for ts, values in sorted(events)])
    kinds = list(DEVICE_TYPES)
    for k in range(CATALOGUE_DEVICES):
        kind, ts = kinds[k % 3], f"2026-02-{1 + k % 28:02d}T12:00:00"
        values = {"temperature": (21.5, 40.0, "LOW"), "power": ("ON", ""), "fingerprint": ("u1", "PASS")}[kind]
        store(kind, [(f"bench-cat-{k:04d}", *values, ts, ts[:10])])
    conn.execute("COMMIT")
    db.close()
    return days, big


async def temperature_app(port: int, app_id: str):
    """A connected app listening on its temperature reply topic: (client, future of the first reply)."""
    args = argparse.Namespace(host="127.0.0.1", port=port, username=None, password=None)
    client, _ = await sim.connect(args, f"{app_id}-{random.randrange(10**6)}")
    got = asyncio.get_running_loop().create_future()
    client.on_message = lambda c, t, p, q, props: got.done() or got.set_result(p) or 0
    subscribed = asyncio.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.subscribe(f"home/datatemp/{app_id}", qos=0)
    await subscribed.wait()
    return client, got


async def ask_day(port: int, device: str, day: str) -> tuple[float, float, int]:
    """A whole device-day, page after page: seconds to the first reply, seconds to the last, pages."""
    app_id = f"bench-asker-{random.randrange(10**6)}"  # each its own rate limit
    client, _ = await temperature_app(port, app_id)
    replies: asyncio.Queue = asyncio.Queue()
    client.on_message = lambda c, t, p, q, props: replies.put_nowait(json.loads(p)) or 0
    started, first, body, records, pages = time.perf_counter(), None, {"device_id": device, "date": day}, 0, 0
    while True:
        client.publish(f"home/gettemp/{app_id}", json.dumps(body))
        reply = await asyncio.wait_for(replies.get(), 30)
        first = first or time.perf_counter() - started
        assert reply["count"] == len(reply["records"]) > 0, str(reply)[:200]
        records, pages = records + reply["count"], pages + 1
        if "next" not in reply:
            break
        body["cursor"] = reply["next"]
    elapsed = time.perf_counter() - started
    assert records == 86_400, records
    await client.disconnect()
    return first, elapsed, pages


async def ask_pages(client, replies: asyncio.Queue, topic: str, body: dict, key: str) -> tuple[float, int, int]:
    """One request followed through all its pages: seconds, pages, items."""
    started, pages, items = time.perf_counter(), 0, 0
    while True:
        client.publish(topic, json.dumps(body))
        reply = await asyncio.wait_for(replies.get(), 30)
        if key not in reply:
            raise SystemExit(f"benchmark: {body} was answered {str(reply)[:300]}")
        pages, items = pages + 1, items + len(reply[key])
        if "next" not in reply:
            return time.perf_counter() - started, pages, items
        body = {**body, "cursor": reply["next"]}


def catalogue_and_summaries(port: int, repeat: int = 21) -> dict[str, tuple[float, int, int]]:
    """Median seconds (request to last page), pages and items of the catalogue and of summaries."""
    cases = {
        "device catalogue": ("devices", {}, "devices"),
        "31-day hourly summary": ("temp", {"device_id": "bench-year", "summary": "hour", "from_date": "2026-01-01",
                                           "to_date": "2026-01-31"}, "buckets"),
        "366-day daily summary": ("temp", {"device_id": "bench-year", "summary": "day", "from_date": YEAR[0],
                                           "to_date": YEAR[1]}, "buckets"),
        "366-day daily power summary": ("power", {"device_id": "bench-year-power", "summary": "day",
                                                  "from_date": YEAR[0], "to_date": YEAR[1]}, "buckets")}

    async def run():
        import gmqtt
        args = argparse.Namespace(host="127.0.0.1", port=port, username=None, password=None)
        client, _ = await sim.connect(args, f"bench-summaries-{random.randrange(10**6)}")
        replies: asyncio.Queue = asyncio.Queue()
        client.on_message = lambda c, t, p, q, props: replies.put_nowait(json.loads(p)) or 0
        subscribed = asyncio.Event()
        client.on_subscribe = lambda *a: subscribed.set()
        client.subscribe([gmqtt.Subscription(f"home/data{stem}/bench-s{i}", qos=0)
                          for i, (stem, _, _) in enumerate(cases.values())])
        await subscribed.wait()
        results = {}
        for i, (name, (stem, body, key)) in enumerate(cases.items()):
            runs = [await ask_pages(client, replies, f"home/get{stem}/bench-s{i}", body, key) for _ in range(repeat)]
            await asyncio.sleep(1)  # the app's rate limit refills
            results[name] = (median(sorted(r[0] for r in runs)), runs[0][1], runs[0][2])
        await client.disconnect()
        return results
    return asyncio.run(run())


def first_reply_after_start(port: int, db: Path, workdir: Path) -> tuple[subprocess.Popen, float]:
    """Start the service and ask every 20 ms until the first reply: seconds from launch."""
    async def probe():
        client, got = await temperature_app(port, "bench-probe")
        launched = time.monotonic()
        with open(workdir / "service-big.out", "wb") as out:
            proc = subprocess.Popen([PYTHON, "system.py"], cwd=ROOT, env={**os.environ, **service_env(port, db)},
                                    stdout=out, stderr=subprocess.STDOUT)
        while not got.done():
            client.publish("home/gettemp/bench-probe", json.dumps({"device_id": "probe", "date": "2026-01-01"}))
            await asyncio.sleep(0.02)
            if time.monotonic() - launched > 60 or proc.poll() is not None:
                raise SystemExit("benchmark: the service did not answer within 60 s of starting")
        elapsed = time.monotonic() - launched
        await client.disconnect()
        return proc, elapsed
    return asyncio.run(probe())


def replies(port: int, db: Path, workdir: Path, rows: int, apps: int, seconds: float, repeat: int = 21) -> dict:
    print(f"building a database of {rows:,} rows ...", flush=True)
    days, big = build_big_database(db, rows)
    proc, startup = first_reply_after_start(port, db, workdir)
    try:
        args = argparse.Namespace(host="127.0.0.1", port=port, username=None, password=None, seed=1)

        async def run():
            done = asyncio.Event()
            asyncio.get_running_loop().call_later(seconds, done.set)
            pick = lambda: ("temperature", *random.choice(days))  # noqa: E731
            return await sim.run_apps(args, apps, pick, done)

        print(f"{apps} apps asking for {len(days):,} device-days of 1,440 readings for {seconds:g} s, while "
              "100 readings/s arrive ...", flush=True)
        trickle = threading.Thread(target=publish_steadily, args=(port, 100, int(100 * seconds)), daemon=True)
        trickle.start()
        report = asyncio.run(run())
        trickle.join()
        if report.problems:
            raise SystemExit("benchmark: wrong or missing replies:\n" + "\n".join(report.problems[:10]))
        busy = sorted(asyncio.run(ask_day(port, *big)) for _ in range(5))  # by time to the first reply
        summaries = catalogue_and_summaries(port, repeat)
        whole = sorted(b[1] for b in busy)
        cost = reply_cost(port, proc, db, days)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"startup": startup, "report": report, "busy_first_median": busy[2][0], "busy_first_max": busy[-1][0],
            "reply_cpu": cost[0], "bare_cpu": cost[1], "summaries": summaries,
            "busy_median": whole[2], "busy_max": whole[-1], "busy_pages": busy[0][2],
            "size_mib": db.stat().st_size / 2**20}


def reply_cost(port: int, proc: subprocess.Popen, db: Path, days: list[tuple[str, str]],
               requests: int = 200) -> tuple[float, float]:
    """CPU seconds per seed-style request for a 1,440-reading day: the service's (one request at
    a time), and the bare cost of the same rows in this process: sqlite3, a dict per record, orjson."""
    import gmqtt
    import orjson
    picked = [random.choice(days) for _ in range(requests)]
    counts = []

    async def ask_all():
        client, _ = await temperature_app(port, "bench-cost")
        replies: asyncio.Queue = asyncio.Queue()
        client.on_message = lambda c, t, p, q, props: replies.put_nowait(p) or 0
        subscribed = asyncio.Event()
        client.on_subscribe = lambda *a: subscribed.set()
        # an app id per 50 requests: within the rate limit
        client.subscribe([gmqtt.Subscription(f"home/datatemp/bench-cost-{k}", qos=0)
                          for k in range((requests + 49) // 50)])
        await subscribed.wait()
        before = cpu_seconds(proc.pid)
        for i, (device, day) in enumerate(picked):
            client.publish(f"home/gettemp/bench-cost-{i // 50}", json.dumps({"device_id": device, "date": day}))
            reply = json.loads(await asyncio.wait_for(replies.get(), 30))
            if "count" not in reply:
                raise SystemExit(f"benchmark: an error reply to a day request: {reply}")
            counts.append(reply["count"])
        used = cpu_seconds(proc.pid) - before
        await client.disconnect()
        return used / requests
    service = asyncio.run(ask_all())
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    started = time.process_time()
    for (device, day), count in zip(picked, counts):
        rows = con.execute("SELECT temperature, humidity, status, timestamp FROM temperature_logs WHERE device_id = ? "
                           "AND date = ? ORDER BY timestamp LIMIT ?", (device, day, count)).fetchall()
        orjson.dumps({"device_id": device, "date": day, "count": len(rows), "records": [
            {"temperature": t, "humidity": h, "status": s, "timestamp": ts} for t, h, s, ts in rows]})
    bare = (time.process_time() - started) / requests
    con.close()
    return service, bare


# -- retention on a big database -----------------------------------------------------------------

class StoredWatcher(threading.Thread):
    """Polls the database every 2 ms for new rows: when each reading (by its timestamp) became
    visible, seen from outside. (A QoS 1 PUBACK to a device comes from the broker, not from
    the service, so it says nothing about a pause in the service.)"""

    def __init__(self, db: Path):
        super().__init__(daemon=True)
        self.db = db
        self.visible: dict[str, float] = {}  # timestamp -> when it was first seen
        self.stop = threading.Event()

    def run(self):
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        last = con.execute("SELECT MAX(id) FROM temperature_logs").fetchone()[0] or 0
        while not self.stop.wait(0.002):
            for row_id, timestamp in con.execute("SELECT id, timestamp FROM temperature_logs WHERE id > ?", (last,)):
                self.visible.setdefault(timestamp, time.perf_counter())
                last = max(last, row_id)
        con.close()


def retention(port: int, db: Path, workdir: Path) -> dict:
    """Restart the service on the big database with rows before 2026-02-01 expired."""
    keep_days = (datetime.now(timezone.utc).date() - date(2026, 2, 1)).days
    config = workdir / "retention.toml"
    config.write_text(f'[retention]\ntemperature_days = {keep_days}\narchive_dir = "{workdir}/archive"\n')
    total = sqlite3.connect(db).execute("SELECT COUNT(*) FROM temperature_logs").fetchone()[0]
    out = workdir / "service-retention.out"
    done = re.compile(r"retention: temperature_logs: (\d+) rows of (\d+) days .* in ([\d.]+) s \(longest delete (\d+) ms\)")

    async def device():
        args = argparse.Namespace(host="127.0.0.1", port=port, username=None, password=None)
        client, _ = await sim.connect(args, "bench-retention-device")
        with open(out, "wb") as log:
            proc = subprocess.Popen([PYTHON, "system.py", "--config", str(config)], cwd=ROOT, stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ, **service_env(port, db)})
        watcher, sent, found, finished = StoredWatcher(db), {}, None, None
        watcher.start()
        # Readings all through the pass, and for 3 s after it, for comparison.
        while finished is None or time.perf_counter() < finished + 3:
            timestamp = datetime.now(timezone.utc).isoformat()
            sent[timestamp] = time.perf_counter()
            client.publish("home/temperature", json.dumps({"device_id": "bench-now", "temperature": 20.0,
                           "humidity": 50.0, "status": "LOW", "timestamp": timestamp}), qos=1)
            await asyncio.sleep(0.01)
            if found is None and (found := done.search(out.read_text(errors="replace"))):
                finished = time.perf_counter()
            if proc.poll() is not None or len(sent) > 100 * 1800:
                raise SystemExit(f"benchmark: the retention pass did not finish:\n{out.read_text()[-2000:]}")
        await asyncio.sleep(1)  # the last ones stored
        watcher.stop.set()
        watcher.join()
        await client.disconnect()
        proc.terminate()
        proc.wait(30)
        # Readings sent before the service had subscribed never reach it (a new session).
        timed = [(at, watcher.visible[ts] - at) for ts, at in sent.items() if ts in watcher.visible]
        return (found, sorted(lat for at, lat in timed if at < finished),
                sorted(lat for at, lat in timed if at >= finished))

    print(f"retention: expiring rows before 2026-02-01 of {total:,} while a device sends 100 readings/s ...",
          flush=True)
    found, latencies, after = asyncio.run(device())
    return {"rows": int(found.group(1)), "total": total, "days": int(found.group(2)),
            "seconds": float(found.group(3)), "longest_delete_ms": int(found.group(4)),
            "stored_p50": median(latencies), "stored_max": max(latencies, default=None),
            "readings": len(latencies), "after_p50": median(after), "after_max": max(after, default=None)}


def median(values: list[float]) -> float | None:
    """The middle of sorted values; None when there are none (a pass over a small database can
    end before the service has taken a single reading)."""
    return values[len(values) // 2] if values else None


def ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f} ms"


# -- scaling out: one and two instances on PostgreSQL ---------------------------------------------

def scale_out(port: int, admin_url: str, workdir: Path, readings: int) -> dict[int, float]:
    """Readings stored per second into PostgreSQL by one instance, then by two in one shared group."""
    import psycopg2  # only this part needs it
    admin = psycopg2.connect(admin_url)
    admin.autocommit = True
    rates = {}
    try:
        for instances in (1, 2):
            name = f"mqtt_bench_{random.randrange(10**8)}"
            with admin.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
            url = admin_url.rsplit("/", 1)[0] + "/" + name
            env = {**service_env(port, workdir / "unused.db"), "DATABASE_URL": url, "MQTT_SHARED_GROUP": name}
            procs = [start([PYTHON, "system.py"], {**env, "MQTT_CLIENT_ID": f"bench-pg-{i}-{name}"},
                           workdir / f"pg-{instances}-{i}.out", "taking readings and requests") for i in range(instances)]
            try:
                print(f"scale-out: {readings:,} readings into {instances} instance(s) on PostgreSQL ...", flush=True)
                started = time.perf_counter()
                result = subprocess.run([PYTHON, "scripts/simulate_devices.py", "--quiet", "--port", str(port),
                                         "--count", str(readings), "--devices", "10"], cwd=ROOT,
                                        capture_output=True, text=True)
                if result.returncode != 0:
                    raise SystemExit(f"benchmark: the simulator failed:\n{result.stdout}{result.stderr}")
                con = psycopg2.connect(url)
                con.autocommit = True

                def stored():
                    with con.cursor() as cursor:
                        cursor.execute("SELECT (SELECT COUNT(*) FROM temperature_logs) + (SELECT COUNT(*) FROM "
                                       "power_status_logs) + (SELECT COUNT(*) FROM fingerprint_logs)")
                        return cursor.fetchone()[0]
                wait_for(lambda: stored() >= readings, 600, f"{readings} readings in PostgreSQL")
                rates[instances] = readings / (time.perf_counter() - started)
                con.close()
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(30)
                with admin.cursor() as cursor:
                    cursor.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        admin.close()
    return rates


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--readings", type=int, default=100_000)
    p.add_argument("--rows", type=int, default=5_000_000)
    p.add_argument("--apps", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20, help="how long the apps keep asking")
    p.add_argument("--retention-only", action="store_true", help="only part 4, on a new --rows database")
    p.add_argument("--postgres", metavar="ADMIN_URL",
                   help="also ingest into PostgreSQL with one and two instances (a user that may create "
                        "databases, e.g. postgresql://postgres@127.0.0.1:5432/postgres)")
    p.add_argument("--steady", default="10,100,1000", metavar="RATES",
                   help="readings/s of the steady-rate part, comma-separated (default: %(default)s)")
    p.add_argument("--steady-seconds", type=float, default=20, help="how long each steady rate lasts")
    p.add_argument("--baseline-subscriber", nargs=2, metavar=("PORT", "DB"), help=argparse.SUPPRESS)
    p.add_argument("--burst", type=int, default=60_000, help="readings of the burst part (raw-socket publisher)")
    p.add_argument("--compare-with", metavar="COMMIT",
                   help="also burst into the service as it was at COMMIT (git archive), e.g. the one before a "
                        "change, to see what the change costs per reading")
    p.add_argument("--rounds", type=int, default=3,
                   help="bursts into each consumer with --compare-with, and of each kind in the fleet part")
    p.add_argument("--repeat", type=int, default=21, help="times each catalogue and summary request is asked")
    p.add_argument("--durable-subscriber", nargs=2, metavar=("PORT", "DB"), help=argparse.SUPPRESS)
    p.add_argument("--raw-publisher", nargs=5, metavar=("PORT", "COUNT", "DEVICES", "KIND", "FIRST"),
                   help=argparse.SUPPRESS)
    p.add_argument("--fleet", type=int, default=20_000, help="new devices of the fleet part")
    p.add_argument("--power-hour", type=int, default=20_000, help="events in the fleet part's power device-hour")
    p.add_argument("--known", type=int, default=100_000, help="devices in the catalogue of the fleet part")
    p.add_argument("--fleet-only", action="store_true", help="only the fleet part (8)")
    args = p.parse_args(argv)
    if args.raw_publisher:
        port, count, devices, kind, first = args.raw_publisher
        raw_publisher(int(port), int(count), int(devices), kind, int(first))
        return 0
    if args.baseline_subscriber:
        baseline_subscriber(int(args.baseline_subscriber[0]), args.baseline_subscriber[1])
        return 0
    if args.durable_subscriber:
        durable_subscriber(int(args.durable_subscriber[0]), args.durable_subscriber[1])
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="benchmark-"))
    broker = Mosquitto(workdir)
    failed = False
    try:
        if args.fleet_only:
            rows = fleet_rows(fleet(workdir, args.fleet, args.known, args.apps, args.seconds, args.rounds,
                                    args.power_hour), args.fleet, args.known, args.apps, args.power_hour)
            print_table(rows, args)
            return 0
        if args.retention_only:
            print(f"building a database of {args.rows:,} rows ...", flush=True)
            build_big_database(workdir / "big.db", args.rows)
            expired = retention(broker.port, workdir / "big.db", workdir)
            print(f"retention pass: {expired['rows']:,} of {expired['total']:,} rows ({expired['days']} days) "
                  f"in {expired['seconds']:.0f} s; longest delete {expired['longest_delete_ms']} ms; "
                  f"{expired['readings']:,} readings sent meanwhile, stored after p50 "
                  f"{ms(expired['stored_p50'])}, max {ms(expired['stored_max'])} (after the pass: p50 "
                  f"{ms(expired['after_p50'])}, max {ms(expired['after_max'])})")
            return 0
        print(f"ingest: {args.readings:,} QoS 1 readings into the service ...", flush=True)
        db = workdir / "service.db"
        proc = start([PYTHON, "system.py"], service_env(broker.port, db), workdir / "service.out",
                     "taking readings and requests")
        ours = ingest("the service", proc, broker.port, db, args.readings)
        proc.terminate()
        proc.wait(30)
        print("ingest: the same into the baseline subscriber ...", flush=True)
        base_db = workdir / "baseline.db"
        proc = start([PYTHON, __file__, "--baseline-subscriber", str(broker.port), str(base_db)], {},
                     workdir / "baseline.out", "baseline subscribed")
        base = ingest("the baseline", proc, broker.port, base_db, args.readings)
        proc.kill()
        proc.wait()
        consumers = [("service", [PYTHON, "system.py"], "taking readings and requests", ROOT),
                     ("baseline", [PYTHON, __file__, "--baseline-subscriber", str(broker.port), "DB"],
                      "baseline subscribed", ROOT)]
        if args.compare_with:  # the service as it was at another commit, side by side
            older = workdir / "older"
            older.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.compare_with], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(older)], input=archive, check=True)
            consumers.insert(1, (args.compare_with, [PYTHON, "system.py"], "taking readings and requests", older))
        bursts = {}
        for round_ in range(args.rounds if args.compare_with else 1):  # alternately, so drift shows in all
            for name, command, ready, cwd in consumers:
                print(f"burst: {args.burst:,} readings from a raw-socket publisher into the {name} ...", flush=True)
                burst_db = workdir / f"burst-{name}-{round_}.db"
                command = [str(burst_db) if part == "DB" else part for part in command]
                proc = start(command, service_env(broker.port, burst_db) if cwd != ROOT or name == "service" else {},
                             workdir / f"burst-{name}.out", ready, cwd)
                try:
                    bursts.setdefault(name, []).append(burst(name, proc, broker.port, burst_db, args.burst))
                finally:
                    proc.kill()
                    proc.wait()
        bursts = {name: {k: median(sorted(b[k] for b in runs)) for k in runs[0]} for name, runs in bursts.items()}
        # Each part below on a broker of its own: the consumers stopped above left their sessions,
        # for which the broker keeps queueing what is published (after the bursts, millions of
        # readings, a 200 MB file saved every 30 s on the cores the consumers share).
        broker = fresh_broker(broker, workdir / "steady")
        rates = [float(r) for r in args.steady.split(",") if r.strip()]
        trickle = steady(broker.port, workdir, rates, args.steady_seconds)
        broker = fresh_broker(broker, workdir / "replies")
        big = replies(broker.port, workdir / "big.db", workdir, args.rows, args.apps, args.seconds, args.repeat)
        expired = retention(broker.port, workdir / "big.db", workdir)
        scaled = scale_out(broker.port, args.postgres, workdir, args.readings) if args.postgres else {}
        broker.stop()
        (workdir / "fleet").mkdir()
        fleets = fleet(workdir / "fleet", args.fleet, args.known, args.apps, args.seconds, args.rounds,
                       args.power_hour)
        broker = Mosquitto(workdir / "fleet")  # stopped below
    except BaseException:
        failed = True
        print(f"benchmark: the consumers' logs are kept in {workdir}", file=sys.stderr)
        raise
    finally:
        broker.stop()
        if not failed:
            shutil.rmtree(workdir, ignore_errors=True)

    r = big["report"]
    rows = [
        ("ingest, readings stored/s", f"{ours['rate']:,.0f}", f"{base['rate']:,.0f}",
         f"ratio {ours['rate'] / base['rate']:.2f} (target ≥ 0.95)"),
        ("ingest, CPU s per 100,000 readings", f"{ours['cpu_per_100k']:.2f}", f"{base['cpu_per_100k']:.2f}",
         "target: ours ≤ baseline"),
        ("ingest, peak RSS", f"{ours['peak_rss']:.0f} MiB", f"{base['peak_rss']:.0f} MiB", "target ≤ 100 MB"),
        (f"burst of {args.burst:,}, readings stored/s", f"{bursts['service']['rate']:,.0f}",
         f"{bursts['baseline']['rate']:,.0f}",
         f"ratio {bursts['service']['rate'] / bursts['baseline']['rate']:.2f} (target ≥ 0.95); publisher "
         f"{bursts['service']['published']:,.0f}/s"),
        (f"burst of {args.burst:,}, CPU s per 100,000", f"{bursts['service']['cpu_per_100k']:.2f}",
         f"{bursts['baseline']['cpu_per_100k']:.2f}",
         f"ratio {bursts['service']['cpu_per_100k'] / bursts['baseline']['cpu_per_100k']:.2f} (target ≤ 1.1); "
         f"publisher {bursts['service']['publisher_cpu']:.2f} s"),
        *([(f"burst of {args.burst:,}, CPU s per 100,000, vs {args.compare_with}",
            f"{bursts['service']['cpu_per_100k']:.2f}", f"{bursts[args.compare_with]['cpu_per_100k']:.2f}",
            f"ratio {bursts['service']['cpu_per_100k'] / bursts[args.compare_with]['cpu_per_100k']:.2f} to the "
            f"service at {args.compare_with} (target ≤ 1.1; medians of {args.rounds} each, alternately; "
            f"{bursts[args.compare_with]['rate']:,.0f} readings/s)")] if args.compare_with else []),
        *((f"steady {rate:g}/s, CPU ms per reading", f"{trickle['service'][rate] * 1000:.2f}",
           f"{trickle['ceiling'][rate] * 1000:.2f}",
           f"durable baseline {trickle['durable'][rate] * 1000:.2f} ms: ratio "
           f"{trickle['service'][rate] / max(trickle['durable'][rate], 1e-9):.2f}{RATIO_TARGETS.get(rate, '')}; "
           f"{trickle['service'][rate] * rate * 100:.2f}% of a core{CORE_TARGETS.get(rate, '')}")
          for rate in rates),
        ("idle, CPU", f"{trickle['idle'] * 100:.2f}% of a core", "", f"over {args.steady_seconds:g} s"),
        (f"1,440-reading day, {args.apps} apps, p50", ms(r.percentile(0.5)), "", f"{r.asked:,} requests"),
        (f"1,440-reading day, {args.apps} apps, p99", ms(r.percentile(0.99)), "", "target ≤ 20 ms, p50 ≤ 5 ms "
         "(100 readings/s arriving)"),
        ("1,440-reading day, CPU per reply", ms(big["reply_cpu"]), ms(big["bare_cpu"]),
         f"ratio {big['reply_cpu'] / big['bare_cpu']:.2f} to bare sqlite3 + orjson (target ≤ 1.5)"),
        ("86,400-reading day, first page, median of 5 (max)",
         f"{ms(big['busy_first_median'])} ({ms(big['busy_first_max'])})", "", "target ≤ 300 ms"),
        (f"86,400-reading day, all {big['busy_pages']} pages, median of 5 (max)",
         f"{ms(big['busy_median'])} ({ms(big['busy_max'])})", "", "replies ≤ queries.max_reply_bytes"),
        *((f"{name}, median of {args.repeat}", ms(seconds), "", f"{items:,} {'devices' if 'catalogue' in name else 'buckets'} in "
           f"{pages} replies; target ≤ {SUMMARY_TARGETS[name]} ms")
          for name, (seconds, pages, items) in big["summaries"].items()),
        ("start to first reply", f"{big['startup']:.2f} s", "", f"{args.rows:,} rows, {big['size_mib']:.0f} MiB"),
        ("retention pass, longest delete", f"{expired['longest_delete_ms']} ms", "",
         f"{expired['rows']:,} of {expired['total']:,} rows, {expired['days']} days, {expired['seconds']:.0f} s"),
        ("retention pass, reading stored p50 / max", f"{ms(expired['stored_p50'])} / {ms(expired['stored_max'])}", "",
         f"{expired['readings']:,} readings during the pass (after it: {ms(expired['after_p50'])} / "
         f"{ms(expired['after_max'])}); target: the commit window (database.commit_linger) and a commit"),
    ]
    for instances, rate in scaled.items():
        rows.append((f"PostgreSQL: readings stored/s, {instances} instance{'s' if instances > 1 else ''}",
                     f"{rate:,.0f}", "", "shared subscription group" if instances > 1 else "DATABASE_URL"))
    rows += fleet_rows(fleets, args.fleet, args.known, args.apps, args.power_hour)
    print_table(rows, args)
    return 0


def print_table(rows: list[tuple], args) -> None:
    print(f"\nbenchmark on {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, {args.readings:,} readings")
    print("baseline: ack on receipt (the ceiling); the steady rows also name the durable baseline (ack after "
          "an fsynced commit)")
    widths = [max(len(str(row[i])) for row in rows + [("", "service", "baseline", "")]) for i in range(4)]
    for row in [("", "service", "baseline", "")] + rows:
        print(f"| {row[0]:<{widths[0]}} | {row[1]:>{widths[1]}} | {row[2]:>{widths[2]}} | {row[3]:<{widths[3]}} |")


if __name__ == "__main__":
    sys.exit(main())
