#!/usr/bin/env python3
"""Ask the service for data as a mobile app would, and print the reply.

    .venv/bin/python scripts/request.py temperature temp_sensor_01 2026-01-22
    .venv/bin/python scripts/request.py power pwr_01 2026-01-22 --all-pages --from 08:00:00 --to 18:00:00
    .venv/bin/python scripts/request.py fingerprint door_01 --latest --json
    .venv/bin/python scripts/request.py temperature temp_sensor_01 --summary day --from-date 2026-01-01 --to-date 2026-01-31
    .venv/bin/python scripts/request.py devices --type power

It connects as app `--app-id` (its reply topic is home/data<type>/<app id>; by default the user
name, which a broker secured with deploy/mosquitto/acl requires), sends one request with a
request_id, and prints the records as a table (or the reply as JSON). With --all-pages it asks for
every page of a day too big for one reply (a summary and the catalogue: always). The broker comes
from MQTT_BROKER_HOST, MQTT_BROKER_PORT, MQTT_TLS, MQTT_TLS_CA_FILE, MQTT_TLS_CERT_FILE,
MQTT_TLS_KEY_FILE, MQTT_USERNAME and MQTT_PASSWORD (an empty one counts as unset), or the options; with a user name and no password it asks for one.
With --check, every reply is also checked against docs/asyncapi.yaml (from a checkout, with the
packages of requirements-dev.txt). Exit code: 0 with a reply, 1 for an error reply, no reply in
time, or (--check) a reply that is not as the document says."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import ssl
import sys
import uuid
from pathlib import Path

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors.devices import BUILTIN_TYPES  # noqa: E402  (the one definition of device types)
from actors.protocol.requests import stems  # noqa: E402

STEMS = stems(BUILTIN_TYPES)  # kind -> (request stem, reply stem); "devices": the catalogue
CATALOGUE_COLUMNS = ("type", "device_id", "state", "readings", "first_seen", "last_seen", "received_at",
                     "clock_rejected")


def flat(row: dict) -> dict:
    """A summary bucket's nested min/max/avg as columns of their own (temperature.min, ...)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def table(records: list[dict]) -> str:
    if not records:
        return "(no records)"
    columns = list(records[0])
    cells = [[str(r.get(c, "")) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


async def ask(args) -> list[tuple[str, bytes]]:
    """The replies as they came (topic, payload): one, or every page with --all-pages."""
    ask_on, reply_on = STEMS[args.kind]
    replies: asyncio.Queue = asyncio.Queue()
    subscribed = asyncio.Event()
    client = gmqtt.Client(f"{args.app_id}-{uuid.uuid4().hex[:6]}")
    client.on_message = lambda c, topic, payload, qos, props: replies.put_nowait((topic, payload)) or 0
    client.on_subscribe = lambda *a: subscribed.set()
    if args.username:
        client.set_auth_credentials(args.username, args.password or None)
    context = None
    if args.tls:
        context = ssl.create_default_context(cafile=args.ca_file)
        if args.cert_file:
            context.load_cert_chain(args.cert_file, args.key_file)
    await client.connect(args.host, args.port, ssl=context or False,
                         version=MQTTv50)
    client.subscribe(f"{reply_on}/{args.app_id}", qos=1)
    await subscribed.wait()
    body = {"device_id": args.device_id}
    if args.kind == "devices":
        body = {"type": args.type} if args.type else {}
    elif args.summary:
        body.update(summary=args.summary, from_date=args.from_date, to_date=args.to_date)
    elif args.latest:
        body["latest"] = True
    else:
        body["date"] = args.date
        for name, value in (("limit", args.limit), ("from", args.start), ("to", args.end)):
            if value is not None:
                body[name] = value
    pages = []
    try:
        while True:
            request_id = uuid.uuid4().hex[:12]
            client.publish(f"{ask_on}/{args.app_id}", json.dumps({**body, "request_id": request_id}), qos=1)
            while True:
                topic, payload = await asyncio.wait_for(replies.get(), args.timeout)
                reply = json.loads(payload)
                if reply.get("request_id") == request_id:
                    break  # else an answer to someone else's request with our app id
            pages.append((topic, payload))
            if "error" in reply or "next" not in reply or not (args.all_pages or args.kind == "devices"
                                                                or args.summary):
                return pages
            body["cursor"] = reply["next"]
    finally:
        await client.disconnect()


def arguments(argv=None, environ=os.environ) -> argparse.Namespace:
    """The command line, with the broker's defaults from the environment as the service reads it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=STEMS, help="a device type, or devices for the catalogue")
    p.add_argument("device_id", nargs="?")
    p.add_argument("date", nargs="?", help="YYYY-MM-DD (not with --latest or --summary)")
    p.add_argument("--latest", action="store_true", help="the device's most recent record")
    p.add_argument("--summary", choices=("hour", "day"), help="buckets from --from-date to --to-date")
    p.add_argument("--from-date", metavar="YYYY-MM-DD")
    p.add_argument("--to-date", metavar="YYYY-MM-DD", help="default: --from-date")
    p.add_argument("--type", choices=[k for k in STEMS if k != "devices"], help="devices: only this type")
    p.add_argument("--all-pages", action="store_true", help="follow `next` until the day is complete")
    p.add_argument("--limit", type=int, help="records per reply")
    p.add_argument("--from", dest="start", metavar="HH:MM:SS")
    p.add_argument("--to", dest="end", metavar="HH:MM:SS")
    p.add_argument("--json", action="store_true", help="print the replies as JSON, one per line")
    p.add_argument("--check", action="store_true", help="check every reply against docs/asyncapi.yaml")
    env = {k: v for k, v in environ.items() if v}  # as the service reads them: empty is unset
    p.add_argument("--app-id", help="default: the user name, or cli-<random> without one")
    p.add_argument("--host", default=env.get("MQTT_BROKER_HOST", "localhost"))
    p.add_argument("--port", type=int, default=int(env.get("MQTT_BROKER_PORT", 0)) or None,
                   help="default: 1883, or 8883 with --tls")
    p.add_argument("--username", default=env.get("MQTT_USERNAME"))
    p.add_argument("--password", default=env.get("MQTT_PASSWORD"), help="default: $MQTT_PASSWORD, or asked")
    p.add_argument("--tls", action="store_true",
                   default=env.get("MQTT_TLS", "").lower() in ("1", "true", "yes", "on"))
    p.add_argument("--ca-file", default=env.get("MQTT_TLS_CA_FILE"))
    p.add_argument("--cert-file", default=env.get("MQTT_TLS_CERT_FILE"), help="a client certificate (TLS)")
    p.add_argument("--key-file", default=env.get("MQTT_TLS_KEY_FILE"), help="its key (default: in --cert-file)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for each reply")
    args = p.parse_args(argv)
    if args.kind == "devices":
        if args.device_id or args.latest or args.summary:
            p.error("devices takes no device id, --latest or --summary (only --type)")
    elif not args.device_id:
        p.error("give a device id")
    elif args.summary:
        if not args.from_date or args.date or args.latest:
            p.error("--summary takes --from-date (and --to-date), not a date or --latest")
        args.to_date = args.to_date or args.from_date
    elif args.latest == bool(args.date):
        p.error("give a date, --latest, or --summary")
    args.app_id = args.app_id or args.username or f"cli-{uuid.uuid4().hex[:8]}"
    args.port = args.port or (8883 if args.tls else 1883)
    return args


def main(argv=None) -> int:
    args = arguments(argv)
    if args.username and args.password is None and sys.stdin.isatty():
        args.password = getpass.getpass(f"password for {args.username}: ")
    contract = None
    if args.check:
        try:
            from scripts.contract import Contract
        except ImportError as exc:
            print(f"--check needs the packages of requirements-dev.txt ({exc})", file=sys.stderr)
            return 1
        contract = Contract()
    try:
        received = asyncio.run(ask(args))
    except asyncio.TimeoutError:
        print(f"no reply within {args.timeout:g} s (is the service running?)", file=sys.stderr)
        return 1
    except (OSError, gmqtt.MQTTConnectError) as exc:
        print(f"cannot connect to the broker at {args.host}: {exc}", file=sys.stderr)
        return 1
    pages = [json.loads(payload) for _, payload in received]
    problems = [p for topic, payload in received for p in contract.problems(topic, payload)] if contract else []
    for problem in problems:
        print(f"not as docs/asyncapi.yaml says: {problem}", file=sys.stderr)
    if args.json:
        for reply in pages:
            print(json.dumps(reply))
    elif "error" in pages[-1]:
        print(f"error {pages[-1]['error']['code']}: {pages[-1]['error']['message']}", file=sys.stderr)
    elif args.kind == "devices":
        devices = [{c: d[c] for c in CATALOGUE_COLUMNS} for reply in pages for d in reply["devices"]]
        print(f"{len(devices)} devices")
        print(table(devices))
    elif args.summary:
        buckets = [flat(b) for reply in pages for b in reply["buckets"]]
        print(f"{args.kind} {args.device_id} by the {args.summary}, {args.from_date} to {args.to_date}: "
              f"{sum(b['readings'] for b in buckets)} readings in {len(buckets)} buckets")
        print(table(buckets))
    else:
        records = [r for reply in pages for r in reply["records"]]
        print(f"{args.kind} {args.device_id} {pages[0]['date'] or '(no data)'}: {len(records)} records"
              + (f" in {len(pages)} replies" if len(pages) > 1 else "")
              + ("; more: --all-pages" if "next" in pages[-1] else ""))
        print(table(records))
    if contract and not problems:
        print(f"{len(pages)} replies, each as docs/asyncapi.yaml says", file=sys.stderr)
    return 1 if "error" in pages[-1] or problems else 0


if __name__ == "__main__":
    sys.exit(main())
