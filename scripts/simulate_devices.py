#!/usr/bin/env python3
"""Simulate a fleet of devices (and, optionally, mobile apps) against the service.

    python scripts/simulate_devices.py --count 100000                           # as fast as possible
    python scripts/simulate_devices.py --devices 5 --rate 50 --duration 60      # 50 readings/s for a minute
    python scripts/simulate_devices.py --count 100000 --invalid 0.02 --verify mqtt_data.db
    python scripts/simulate_devices.py --rate 200 --duration 30 --requests 20   # and 20 apps asking
    python scripts/simulate_devices.py --mix temperature=1 --devices 20000 --count 20000 --fleet \
        --watch-availability 120                                                # a fleet appears, then goes silent

Each device's readings have distinct timestamps stepping through --days days from --start-date,
so every valid reading must end up stored exactly once. --invalid mixes in deliberately broken
readings (bad JSON, missing or mistyped fields, unknown statuses, bad timestamps), each of which
must end up in rejected_messages. --verify DATABASE waits for the service to store everything and
then compares reading by reading: lost, duplicated, unexpected, wrong values; it exits 1 on any
mismatch. Device ids start with --prefix (random by default), so runs do not collide.

--fleet plays a fleet appearing at once: every device sends its first reading before any sends a
second (with --count equal to the devices, each sends one), then all of them fall silent at once.
--watch-availability SECONDS follows home/availability/# meanwhile: each new device must be
announced (live) and, once its stale_after has passed in silence, stale; it prints how many were
and when the last one came, and exits 1 unless every device was announced stale in time."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import gmqtt
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.storage import PersistentStorage
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors.devices import BUILTIN_TYPES as DEVICE_TYPES  # noqa: E402  (the one definition of device types)
from actors.protocol.requests import stems  # noqa: E402

STEMS = stems(DEVICE_TYPES)  # kind -> (request stem, reply stem); "devices": the catalogue


def broken(rng, body: dict, marker: str) -> bytes:
    """A reading the service must refuse; `marker` makes it findable in rejected_messages."""
    kind = rng.randrange(5)
    if kind == 0:
        return f'{{"device_id": "{marker}", not json'.encode()
    body = {**body, "device_id": marker}
    if kind == 1:
        body.pop("timestamp")
    elif kind == 2:
        body["timestamp"] = "yesterday"
    elif kind == 3:
        body["status" if "status" in body else "authStatus"] = "BROKEN"
    else:
        body["device_id"] = [marker]
    return json.dumps(body).encode()


@dataclass
class Fleet:
    """What each device sends, reproducible from the seed, and a record of it for --verify."""
    prefix: str
    devices: int
    mix: dict[str, float]
    start: date
    days: int
    seed: int
    invalid: float = 0.0
    appear: bool = False  # devices in turn (a fleet appearing at once), not at random
    valid: dict[tuple[str, str, str], tuple] = field(default_factory=dict)  # (kind, device, ts) -> row
    rejected: list[bytes] = field(default_factory=list)
    days_sent: set[tuple[str, str, str]] = field(default_factory=set)  # (kind, device, date)

    def readings(self):
        rng = random.Random(self.seed)
        kinds, weights = list(self.mix), list(self.mix.values())
        sent: dict[str, int] = {}
        midnight = datetime.combine(self.start, datetime.min.time())
        turns: Counter = Counter()  # readings of each type so far (--fleet: devices in turn)
        while True:
            kind = rng.choices(kinds, weights)[0]
            number = turns[kind] % self.devices if self.appear else rng.randrange(self.devices)
            turns[kind] += 1
            device_id = f"{self.prefix}-{kind}-{number:03d}"
            k = sent[device_id] = sent.get(device_id, -1) + 1
            # the k-th reading of a device: day k % days, second k // days of that day
            moment = midnight + timedelta(days=k % self.days, seconds=k // self.days)
            body = {"device_id": device_id, **DEVICE_TYPES[kind].example(rng.randrange(10**6)),
                    "timestamp": moment.isoformat()}
            if self.invalid and rng.random() < self.invalid:
                payload = broken(rng, body, f"{self.prefix}-bad-{len(self.rejected)}")
                self.rejected.append(payload)
            else:
                payload = json.dumps(body).encode()
                row = DEVICE_TYPES[kind].parse(payload)
                self.valid[(kind, device_id, row[-2])] = row
                self.days_sent.add((kind, device_id, row[-1]))
            yield kind, DEVICE_TYPES[kind].reading_topic, payload


class AckCounter(PersistentStorage):
    """gmqtt keeps each unacknowledged QoS 1 publish here until its PUBACK arrives:
    counting them gives acknowledgements and lets us respect the broker's receive maximum."""

    def __init__(self):
        super().__init__()
        self.in_flight: set[int] = set()
        self.acked = 0
        self.freed = asyncio.Event()

    def push_message(self, mid, raw_package):
        super().push_message(mid, raw_package)
        self.in_flight.add(mid)

    def remove_message_by_mid(self, mid):
        super().remove_message_by_mid(mid)
        if mid in self.in_flight:
            self.in_flight.discard(mid)
            self.acked += 1
            self.freed.set()


async def connect(args, client_id: str, **kwargs) -> tuple[gmqtt.Client, dict]:
    connack = {}
    connected = asyncio.Event()

    def on_connect(client, flags, rc, properties):
        connack.update(properties)
        connected.set()

    client = gmqtt.Client(client_id, **kwargs)
    client.on_connect = on_connect
    if args.username:
        client.set_auth_credentials(args.username, args.password)
    await client.connect(args.host, args.port, version=MQTTv50)
    await connected.wait()
    return client, connack


async def publish(args, fleet: Fleet, done: asyncio.Event) -> dict:
    acks = AckCounter()
    client, connack = await connect(args, f"simulator-{uuid.uuid4().hex[:8]}", persistent_storage=acks)
    window = (connack.get("receive_maximum") or [65535])[0]
    sent = Counter()
    total, deadline = args.count, time.monotonic() + args.duration if args.duration else None
    started = time.monotonic()
    bar = tqdm(total=total, unit="msg", disable=args.quiet, dynamic_ncols=True)
    readings = fleet.readings()
    i = 0
    while (total is None or i < total) and (deadline is None or time.monotonic() < deadline):
        kind, topic, payload = next(readings)
        if args.qos:
            while len(acks.in_flight) >= window - 2:  # gmqtt's packet-id pool is the window
                acks.freed.clear()
                await acks.freed.wait()
        client.publish(topic, payload, qos=args.qos)
        sent[kind] += 1
        i += 1
        if args.rate:
            ahead = started + i / args.rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        elif i % 256 == 0:
            await asyncio.sleep(0)  # let the loop write to the socket and read PUBACKs
        if i % 1000 == 0:
            bar.update(1000)
            bar.set_postfix(acked=acks.acked if args.qos else "-")
    if args.qos:
        while acks.in_flight:
            acks.freed.clear()
            await acks.freed.wait()
    elapsed = time.monotonic() - started
    bar.update(i - bar.n)
    bar.set_postfix(acked=acks.acked if args.qos else "-")
    bar.close()
    done.set()
    await client.disconnect()
    return {"sent": sent, "total": i, "acked": acks.acked, "seconds": elapsed, "started": started}


@dataclass
class AppReport:
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    asked: int = 0
    kinds: Counter = field(default_factory=Counter)  # requests by what they asked for

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    def summary(self) -> str:
        ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.kinds.items()))
        return (f"{self.asked} requests ({kinds}), {len(self.latencies)} replies: p50 {ms(self.percentile(0.5))}, "
                f"p90 {ms(self.percentile(0.9))}, p99 {ms(self.percentile(0.99))}, "
                f"max {ms(max(self.latencies, default=float('nan')))}; {len(self.problems)} wrong or missing")


EXTRAS = ("day", "summary", "devices", "day", "day", "summary", "day", "day", "day", "day")


def request_for(n: int, kind: str, device_id: str, date_: str, extras: bool) -> tuple[str, dict]:
    """An app's n-th request, about a device-day it picked: the day itself; with `extras`, two in ten
    are the day's hourly summary and one the device catalogue (EXTRAS)."""
    what = EXTRAS[n % len(EXTRAS)] if extras else "day"
    if what == "devices":
        return "devices", {"type": kind}
    if what == "summary":
        return kind, {"device_id": device_id, "summary": "hour", "from_date": date_, "to_date": date_}
    return kind, {"device_id": device_id, "date": date_}


def reply_problem(stem: str, body: dict, reply: dict) -> str | None:
    """What is wrong with a reply to `body`, if anything."""
    if "error" in reply:
        return "an error"
    if stem == "devices":
        entries = reply.get("devices", [])
        keys = [(e.get("type"), e.get("device_id")) for e in entries]
        ok = reply.get("count") == len(entries) and keys == sorted(keys) and all(e.get("readings", 0) >= 0
                                                                                 for e in entries)
        return None if ok else "a catalogue out of order or miscounted"
    if "summary" in body:
        buckets = reply.get("buckets", [])
        ok = reply.get("device_id") == body["device_id"] and reply.get("count") == len(buckets) \
            and [b.get("start") for b in buckets] == [f"{body['from_date']}T{h:02d}:00:00" for h in range(len(buckets))]
        return None if ok else "a summary with the wrong buckets"
    stamps = [r.get("timestamp", "") for r in reply.get("records", [])]
    if (reply.get("device_id"), reply.get("date")) != (body["device_id"], body["date"]) \
            or reply.get("count") != len(stamps) or stamps != sorted(stamps) \
            or any(not s.startswith(body["date"]) for s in stamps):
        return "wrong records"
    return None


async def run_apps(args, apps: int, pick_day, done: asyncio.Event, think: float = 1.0,
                   timeout: float = 5.0, extras: bool = False) -> AppReport:
    """`apps` mobile apps, each asking for a device-day (pick_day() -> (kind, device_id, date) or
    None) after a random pause (mean `think` s), one request at a time, until `done` is set. With
    `extras`, some ask for its hourly summary or the device catalogue instead (request_for)."""
    report = AppReport()
    ids = [f"simapp-{uuid.uuid4().hex[:6]}-{i}" for i in range(apps)]
    waiting: dict[str, asyncio.Future] = {}

    def on_message(client, topic, payload, qos, properties):
        app = topic.rsplit("/", 1)[-1]
        future = waiting.pop(app, None)
        if future is not None and not future.done():
            future.set_result(payload)
        return 0

    client, _ = await connect(args, f"simapps-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    subscribed = asyncio.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.subscribe([gmqtt.Subscription(f"{reply}/{app}", qos=0) for app in ids for _, reply in STEMS.values()])
    await subscribed.wait()
    rng = random.Random(args.seed + 1)

    async def app(app_id: str):
        n = 0
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), rng.expovariate(1 / think))
                break
            except asyncio.TimeoutError:
                pass
            day = pick_day()
            if day is None:
                continue
            stem, body = request_for(n, *day, extras)
            n += 1
            report.kinds[stem == "devices" and "catalogue" or "summary" in body and "summary" or "day"] += 1
            future = asyncio.get_running_loop().create_future()
            waiting[app_id] = future
            report.asked += 1
            sent_at = time.perf_counter()
            client.publish(f"{STEMS[stem][0]}/{app_id}", json.dumps(body))
            try:
                payload = await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                waiting.pop(app_id, None)
                report.problems.append(f"no reply within {timeout:g} s to {stem} {body}")
                continue
            report.latencies.append(time.perf_counter() - sent_at)
            reply = json.loads(payload)
            if (problem := reply_problem(stem, body, reply)) is not None:
                report.problems.append(f"{problem} in the reply to {stem} {body}: {str(reply)[:200]}")

    await asyncio.gather(*(app(a) for a in ids))
    await client.disconnect()
    return report


def stored_rows(database: str, prefix: str) -> dict[str, list[tuple]]:
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        rows = {}
        for kind, device in DEVICE_TYPES.items():
            columns = ", ".join(("device_id", *device.value_columns, "timestamp", "date"))
            rows[kind] = con.execute(
                f"SELECT {columns} FROM {device.model._meta.table_name} WHERE device_id >= ? AND device_id < ?",
                (prefix + "-", prefix + "-\U0010ffff")).fetchall()
        return rows
    finally:
        con.close()


def stored_count(database: str, prefix: str, with_rejected: bool) -> int:
    """Readings (and rejections) of this run stored so far: cheap enough to poll."""
    try:
        con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    except sqlite3.OperationalError:
        return 0
    try:
        total = sum(con.execute(f"SELECT COUNT(*) FROM {d.model._meta.table_name} "
                                "WHERE device_id >= ? AND device_id < ?",
                                (prefix + "-", prefix + "-\U0010ffff")).fetchone()[0]
                    for d in DEVICE_TYPES.values())
        if with_rejected:
            total += con.execute("SELECT COUNT(*) FROM rejected_messages WHERE instr(payload, ?) > 0",
                                 (f"{prefix}-bad-".encode(),)).fetchone()[0]
        return total
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def rejected_payloads(database: str, prefix: str) -> Counter:
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        marker = f"{prefix}-bad-".encode()
        return Counter(bytes(p) for (p,) in con.execute(
            "SELECT payload FROM rejected_messages WHERE instr(payload, ?) > 0", (marker,)))
    finally:
        con.close()


def verify(args, fleet: Fleet, result: dict) -> bool:
    """Wait until everything sent is accounted for (or --verify-timeout), then compare reading
    by reading; print lost / duplicated / unexpected / wrong per device type."""
    expected = len(fleet.valid) + len(fleet.rejected)
    deadline = time.monotonic() + args.verify_timeout
    while stored_count(args.verify, fleet.prefix, bool(fleet.rejected)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)  # counting is cheap; the reading-by-reading comparison runs once, below
    stored_at = time.monotonic() - result["started"]
    try:
        rows = stored_rows(args.verify, fleet.prefix)
        rejected = rejected_payloads(args.verify, fleet.prefix)
    except sqlite3.OperationalError:
        rows, rejected = {kind: [] for kind in DEVICE_TYPES}, Counter()
    ok = True
    print(f"{'':<12} {'sent':>9} {'stored':>9} {'lost':>6} {'dup':>6} {'unexp':>6} {'wrong':>6}  device-days")
    for kind in DEVICE_TYPES:
        expected = {k[1:]: row for k, row in fleet.valid.items() if k[0] == kind}
        keys = Counter((row[0], row[-2]) for row in rows[kind])
        lost = sum(1 for key in expected if key not in keys)
        duplicated = sum(n - 1 for n in keys.values() if n > 1)
        unexpected = sum(1 for key in keys if key not in expected)
        wrong = sum(1 for row in rows[kind] if (row[0], row[-2]) in expected
                    and tuple(row) != expected[(row[0], row[-2])])
        ok &= not (lost or duplicated or unexpected or wrong)
        days = sum(1 for d in fleet.days_sent if d[0] == kind)
        print(f"{kind:<12} {len(expected):>9,} {len(rows[kind]):>9,} {lost:>6} {duplicated:>6} "
              f"{unexpected:>6} {wrong:>6}  {days}")
    sent_bad = Counter(fleet.rejected)
    missing_bad = sum((sent_bad - rejected).values())
    print(f"{'invalid':<12} {len(fleet.rejected):>9,} {sum(rejected.values()):>9,} {missing_bad:>6} "
          f"{sum((rejected - sent_bad).values()):>6}   (kept in rejected_messages)")
    ok &= missing_bad == 0 and rejected == sent_bad
    total = sum(len(r) for r in rows.values()) + sum(rejected.values())
    print(f"stored {total:,} messages {stored_at:.2f} s after the first publish: "
          f"{total / stored_at:,.0f} per second; {'OK' if ok else 'MISMATCH'}")
    return ok


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--devices", type=int, default=10, help="devices per type (default 10)")
    p.add_argument("--count", type=int, help="readings to send in all")
    p.add_argument("--duration", type=float, help="seconds to send for")
    p.add_argument("--rate", type=float, default=0, help="readings per second (default: as fast as possible)")
    p.add_argument("--qos", type=int, choices=(0, 1), default=1)
    p.add_argument("--mix", default="temperature=1,power=1,fingerprint=1",
                   help="relative share of each device type (default: equal)")
    p.add_argument("--invalid", type=float, default=0.0, help="fraction of deliberately invalid readings")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start-date", type=date.fromisoformat, default=date(2026, 1, 22))
    p.add_argument("--days", type=int, default=1, help="spread each device's readings over this many days")
    p.add_argument("--prefix", help="device id prefix (default: sim-<random>)")
    p.add_argument("--requests", type=int, default=0, metavar="N",
                   help="N apps ask for device-days, their hourly summaries and the device catalogue while the "
                        "load runs (about one request per app per second)")
    p.add_argument("--verify", metavar="DATABASE", help="wait until the service stored everything; "
                                                        "exit 1 on any lost, duplicated, unexpected or wrong reading")
    p.add_argument("--verify-timeout", type=float, default=120)
    p.add_argument("--fleet", action="store_true",
                   help="devices in turn: every device sends a reading before any sends another")
    p.add_argument("--watch-availability", type=float, metavar="SECONDS",
                   help="follow home/availability/#: every device announced, then stale within SECONDS")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.count is None and args.duration is None:
        p.error("give --count or --duration")
    if not 0 <= args.invalid <= 1:
        p.error("--invalid is a fraction between 0 and 1")
    try:
        mix = {k: float(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    except ValueError:
        p.error("--mix looks like temperature=2,power=1,fingerprint=1")
    unknown = set(mix) - set(DEVICE_TYPES)
    if unknown:
        p.error(f"--mix: unknown device types {', '.join(sorted(unknown))}")
    args.mix = {k: v for k, v in mix.items() if v > 0}
    return args


async def simulate(args, fleet: Fleet):
    done = asyncio.Event()
    apps = watcher = None
    if args.watch_availability:
        watcher = AvailabilityWatcher(fleet.prefix)
        await watcher.start(args)
    if args.requests:
        pick = lambda: random.choice(list(fleet.days_sent)) if fleet.days_sent else None  # noqa: E731
        apps = asyncio.ensure_future(run_apps(args, args.requests, pick, done, extras=True))
    result = await publish(args, fleet, done)
    if watcher is not None:
        await watcher.until_stale(len({d for _, d, _ in fleet.days_sent}), args.watch_availability)
    return result, (await apps if apps else None), watcher


class AvailabilityWatcher:
    """The availability states of the fleet's devices as the broker delivers them."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.announced: set[str] = set()  # topics announced at all (live, or stale already)
        self.stale: set[str] = set()
        self.last_stale_at: float | None = None
        self.changed = asyncio.Event()

    async def start(self, args) -> None:
        self.client, _ = await connect(args, f"simulator-watch-{uuid.uuid4().hex[:8]}")
        subscribed = asyncio.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.subscribe(gmqtt.Subscription("home/availability/#", qos=1))
        await subscribed.wait()

    def _on_message(self, client, topic, payload, qos, properties):
        if not topic.rpartition("/")[2].startswith(f"{self.prefix}-"):
            return 0  # another run's devices
        state = json.loads(payload)["state"] if payload else None
        self.announced.add(topic)
        if state == "stale":
            self.stale.add(topic)
            self.last_stale_at = time.monotonic()
        else:
            self.stale.discard(topic)
        self.changed.set()
        return 0

    async def until_stale(self, devices: int, timeout: float) -> None:
        self.devices, self.silent_at = devices, time.monotonic()
        deadline = self.silent_at + timeout
        while len(self.stale) < devices and time.monotonic() < deadline:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        await self.client.disconnect()

    def summary(self) -> str:
        last = f"{self.last_stale_at - self.silent_at:.1f} s after the fleet fell silent" \
            if self.last_stale_at else "none"
        return (f"{len(self.announced):,} of {self.devices:,} devices announced, {len(self.stale):,} stale now "
                f"(the last: {last})")

    @property
    def complete(self) -> bool:
        return len(self.announced) == len(self.stale) == self.devices


def main(argv=None) -> int:
    args = parse_args(argv)
    prefix = args.prefix or f"sim-{uuid.uuid4().hex[:6]}"
    fleet = Fleet(prefix, args.devices, args.mix, args.start_date, args.days, args.seed, args.invalid, args.fleet)
    result, apps, watcher = asyncio.run(simulate(args, fleet))
    rate = result["total"] / result["seconds"] if result["seconds"] else 0
    print(f"sent {result['total']:,} readings ({len(fleet.rejected):,} invalid) at QoS {args.qos} in "
          f"{result['seconds']:.2f} s ({rate:,.0f}/s), {result['acked']:,} acknowledged by the broker; "
          f"device ids {prefix}-*")
    for kind, n in result["sent"].items():
        print(f"  {kind:<12} {n:>9,} from {args.devices} devices on {DEVICE_TYPES[kind].reading_topic}")
    ok = True
    if apps is not None:
        print(f"apps: {apps.summary()}")
        for problem in apps.problems[:10]:
            print(f"  {problem}")
        ok = not apps.problems
    if watcher is not None:
        print(f"availability: {watcher.summary()}")
        ok &= watcher.complete
    if args.verify:
        ok &= verify(args, fleet, result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
