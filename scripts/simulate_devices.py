#!/usr/bin/env python3
"""Simulate a fleet of devices: publish readings of every device type to the broker.

    python scripts/simulate_devices.py --devices 10 --count 100000            # as fast as possible
    python scripts/simulate_devices.py --devices 5 --rate 50 --duration 60    # 50 readings/s for a minute
    python scripts/simulate_devices.py --count 100000 --verify mqtt_data.db   # and check they were stored

Readings are valid and unique (each device's timestamps step through the chosen days), so every
one of them must end up stored exactly once; with --verify the script waits for that and reports
how fast the service stored them. Device ids start with --prefix (random by default), so runs do
not collide."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import gmqtt
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.storage import PersistentStorage
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors.devices import DEVICE_TYPES  # noqa: E402  (the one definition of device types)


def temperature(rng, device_id, timestamp):
    return {"device_id": device_id, "temperature": round(rng.uniform(15, 35), 1),
            "humidity": round(rng.uniform(20, 80), 1), "status": rng.choice(("HIGH", "LOW")),
            "timestamp": timestamp}


def power(rng, device_id, timestamp):
    return {"device_id": device_id, "status": rng.choice(("EB_ON", "EB_OFF", "DG_ON", "DG_OFF")),
            "timestamp": timestamp}


def fingerprint(rng, device_id, timestamp):
    return {"device_id": device_id, "user_id": f"user_{rng.randrange(1000):03d}",
            "authStatus": rng.choice(("PASS", "FAIL")), "timestamp": timestamp}


MAKERS = {"temperature": temperature, "power": power, "fingerprint": fingerprint}


@dataclass
class Fleet:
    """Which device sends next, and what: reproducible from the seed."""
    prefix: str
    devices: int
    mix: dict[str, float]
    start: date
    days: int
    seed: int

    def readings(self):
        rng = random.Random(self.seed)
        kinds, weights = list(self.mix), list(self.mix.values())
        sent: dict[str, int] = {}
        midnight = datetime.combine(self.start, datetime.min.time())
        while True:
            kind = rng.choices(kinds, weights)[0]
            device_id = f"{self.prefix}-{kind}-{rng.randrange(self.devices):03d}"
            k = sent[device_id] = sent.get(device_id, -1) + 1
            # the k-th reading of a device: day k % days, second k // days of that day
            moment = midnight + timedelta(days=k % self.days, seconds=k // self.days)
            body = MAKERS[kind](rng, device_id, moment.isoformat())
            yield kind, DEVICE_TYPES[kind].reading_topic, json.dumps(body).encode()


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


async def publish(args, fleet: Fleet) -> dict:
    acks = AckCounter()
    connected = asyncio.Event()
    window = {"size": 65535}

    def on_connect(client, flags, rc, properties):
        window["size"] = (properties.get("receive_maximum") or [65535])[0]
        connected.set()

    client = gmqtt.Client(f"simulator-{uuid.uuid4().hex[:8]}", persistent_storage=acks)
    client.on_connect = on_connect
    if args.username:
        client.set_auth_credentials(args.username, args.password)
    await client.connect(args.host, args.port, version=MQTTv50)
    await connected.wait()

    sent = {kind: 0 for kind in fleet.mix}
    total = args.count
    deadline = time.monotonic() + args.duration if args.duration else None
    started = time.monotonic()
    bar = tqdm(total=total, unit="msg", disable=args.quiet, dynamic_ncols=True)
    readings = fleet.readings()
    i = 0
    while (total is None or i < total) and (deadline is None or time.monotonic() < deadline):
        kind, topic, payload = next(readings)
        if args.qos:
            while len(acks.in_flight) >= window["size"] - 2:  # gmqtt's id pool is the window
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
    await client.disconnect()
    return {"sent": sent, "total": i, "acked": acks.acked, "seconds": elapsed, "started": started}


def stored_counts(database: str, prefix: str) -> dict[str, int]:
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        counts = {}
        for kind, device in DEVICE_TYPES.items():
            table = device.model._meta.table_name
            counts[kind] = con.execute(
                f"SELECT COUNT(*) FROM {table} WHERE device_id >= ? AND device_id < ?",
                (prefix + "-", prefix + "-\U0010ffff")).fetchone()[0]
        return counts
    finally:
        con.close()


def verify(args, prefix: str, result: dict) -> bool:
    """Wait until every reading sent is stored (or --verify-timeout passes); report."""
    expected = result["sent"]
    deadline = time.monotonic() + args.verify_timeout
    while True:
        try:
            counts = stored_counts(args.verify, prefix)
        except sqlite3.OperationalError:
            counts = {kind: 0 for kind in expected}
        if all(counts.get(k, 0) >= n for k, n in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    stored_at = time.monotonic() - result["started"]
    ok = True
    for kind, n in expected.items():
        got = counts.get(kind, 0)
        status = "ok" if got == n else ("MISSING %d" % (n - got) if got < n else "EXTRA %d" % (got - n))
        ok &= got == n
        print(f"  {kind:<12} sent {n:>9,}  stored {got:>9,}  {status}")
    total = sum(counts.values())
    print(f"stored {total:,} readings {stored_at:.2f} s after the first publish: "
          f"{total / stored_at:,.0f} readings/s")
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
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start-date", type=date.fromisoformat, default=date(2026, 1, 22))
    p.add_argument("--days", type=int, default=1, help="spread each device's readings over this many days")
    p.add_argument("--prefix", help="device id prefix (default: sim-<random>)")
    p.add_argument("--verify", metavar="DATABASE", help="wait until the service stored every reading; "
                                                        "exit 1 if any is missing or extra")
    p.add_argument("--verify-timeout", type=float, default=120)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.count is None and args.duration is None:
        p.error("give --count or --duration")
    try:
        mix = {k: float(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    except ValueError:
        p.error("--mix looks like temperature=2,power=1,fingerprint=1")
    unknown = set(mix) - set(DEVICE_TYPES)
    if unknown:
        p.error(f"--mix: unknown device types {', '.join(sorted(unknown))}")
    args.mix = {k: v for k, v in mix.items() if v > 0}
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    prefix = args.prefix or f"sim-{uuid.uuid4().hex[:6]}"
    fleet = Fleet(prefix, args.devices, args.mix, args.start_date, args.days, args.seed)
    result = asyncio.run(publish(args, fleet))
    rate = result["total"] / result["seconds"] if result["seconds"] else 0
    print(f"sent {result['total']:,} readings at QoS {args.qos} in {result['seconds']:.2f} s "
          f"({rate:,.0f}/s), {result['acked']:,} acknowledged by the broker; device ids {prefix}-*")
    for kind, n in result["sent"].items():
        print(f"  {kind:<12} {n:>9,} from {args.devices} devices on {DEVICE_TYPES[kind].reading_topic}")
    if args.verify:
        return 0 if verify(args, prefix, result) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
