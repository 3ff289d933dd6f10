"""Summaries and the device catalogue, end to end against a real Mosquitto, on SQLite and
PostgreSQL: a summary from the service's rollups is the one computed from the raw rows, whatever the
order readings arrive in, late ones and repeated ones included; the catalogue follows every commit."""

import random
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import reference
from builders import fingerprint, power, second_of, temperature
from conftest import wait_until

DAYS = ("2026-04-01", "2026-04-02", "2026-04-03")


def publish_all(db_service, client, readings, table, expected):
    for topic, body in readings:
        client.publish(topic, body, wait=False)
    wait_until(lambda: db_service.query(f"SELECT COUNT(*) FROM {table}")[0][0] == expected, 30,
               what=f"{expected} rows in {table}")


def waves(rng, readings, topic):
    """The readings shuffled, in two waves (the second with late ones into hours already summarized),
    each with some sent twice."""
    shuffled = [(topic, r) for r in readings]
    rng.shuffle(shuffled)
    cut = len(shuffled) * 2 // 3
    first, second = shuffled[:cut], shuffled[cut:]
    return first + rng.sample(first, 10), second + rng.sample(shuffled, 10)


def summary(client, stem, body):
    """Every page of a summary, as one list of buckets (and the first reply)."""
    buckets, first = [], None
    while True:
        reply = client.request(stem, "app", body)
        assert "error" not in reply, reply
        assert reply["count"] == len(reply["buckets"])
        first = first or reply
        buckets += reply["buckets"]
        if "next" not in reply:
            return buckets, first
        body = {**body, "cursor": reply["next"]}


def test_a_temperature_summary_is_the_raw_rows_summary_whatever_the_order(db_service, client):
    db_service.start().wait_ready()
    client.subscribe_replies("app")
    rng = random.Random(15)
    readings = [temperature("t1", rng.randrange(86400), day, value=round(rng.uniform(-5, 35), 1),
                            humidity=round(rng.uniform(0, 100), 2), status=rng.choice(("HIGH", "LOW")))
                for day in DAYS for _ in range(150)]
    unique = len({(r["timestamp"], r["temperature"], r["humidity"], r["status"]) for r in readings})
    first, second = waves(rng, readings, "home/temperature")
    raw = "SELECT temperature, humidity, status, timestamp FROM temperature_logs WHERE device_id = 't1'"
    publish_all(db_service, client, first, "temperature_logs", len({str(sorted(r.items())) for _, r in first}))
    for wave in (first, second):
        if wave is second:
            publish_all(db_service, client, second, "temperature_logs", unique)
        rows = db_service.query(raw)
        for kind, from_date, to_date in (("hour", DAYS[1], DAYS[1]), ("day", "2026-03-31", DAYS[2]),
                                         ("hour", DAYS[0], DAYS[2])):
            body = {"device_id": "t1", "summary": kind, "from_date": from_date, "to_date": to_date, "request_id": "s"}
            buckets, reply = summary(client, "temp", body)
            assert (reply["device_id"], reply["summary"], reply["from_date"], reply["to_date"], reply["request_id"]) \
                == ("t1", kind, from_date, to_date, "s")
            assert buckets == reference.temperature(kind, rows, from_date, to_date)
    assert sum(b["readings"] for b in buckets) == unique
    assert buckets[0]["start"] == f"{DAYS[0]}T00:00:00" and len(buckets) == 72  # 72 hours, in two pages or more


def test_power_on_time_is_carried_through_hours_and_days_as_replies_carry_state(db_service, client):
    db_service.start().wait_ready()
    client.subscribe_replies("app")
    rng = random.Random(16)
    events = [{"device_id": "p1", "status": rng.choice(("EB_ON", "EB_OFF", "DG_ON", "DG_OFF")),
               "timestamp": second_of(day, rng.randrange(86400)) + rng.choice(("", ".25"))}
              for day in DAYS for _ in range(12)]
    events.append(power("p1", "EB_OFF", "2026-04-06T00:00:00"))  # "now" is after
    unique = len({(e["timestamp"], e["status"]) for e in events})
    first, second = waves(rng, events, "home/power")
    raw = "SELECT ebstatus, dgstatus, timestamp FROM power_status_logs WHERE device_id = 'p1'"
    publish_all(db_service, client, first, "power_status_logs", len({(e["timestamp"], e["status"]) for _, e in first}))
    publish_all(db_service, client, second, "power_status_logs", unique)
    rows = db_service.query(raw)
    for kind, from_date, to_date in (("hour", DAYS[1], DAYS[1]), ("day", "2026-03-31", "2026-04-05")):
        buckets, _ = summary(client, "power", {"device_id": "p1", "summary": kind, "from_date": from_date,
                                               "to_date": to_date})
        assert buckets == reference.power(kind, rows, from_date, to_date)
    assert buckets[-2]["start"] == "2026-04-04" and buckets[-2]["readings"] == 0  # no events: still its ON time
    assert any(b["eb_on_s"] or b["dg_on_s"] for b in buckets)


def test_a_fingerprint_summary_counts_passes_fails_and_distinct_users(db_service, client):
    db_service.start().wait_ready()
    client.subscribe_replies("app")
    rng = random.Random(17)
    events = [fingerprint("door", f"u{rng.randrange(6)}", rng.choice(("PASS", "FAIL")), second_of(day, rng.randrange(86400)))
              for day in DAYS for _ in range(40)]
    unique = len({(e["timestamp"], e["user_id"], e["authStatus"]) for e in events})
    first, second = waves(rng, events, "home/fingerprint")
    publish_all(db_service, client, first + second, "fingerprint_logs", unique)
    rows = db_service.query("SELECT user_id, auth_status, timestamp FROM fingerprint_logs WHERE device_id = 'door'")
    for kind in ("hour", "day"):
        buckets, _ = summary(client, "fingerprint", {"device_id": "door", "summary": kind, "from_date": DAYS[0],
                                                     "to_date": DAYS[2]})
        assert buckets == reference.fingerprint(kind, rows, DAYS[0], DAYS[2])
    assert [b["users"] for b in buckets] == [len({r[0] for r in rows if r[2].startswith(d)}) for d in DAYS]


BAD_SUMMARIES = [
    ({"summary": "week", "from_date": "2026-04-01", "to_date": "2026-04-02"}, "invalid_field"),
    ({"summary": "day", "from_date": "2026-04-02", "to_date": "2026-04-01"}, "invalid_request"),
    ({"summary": "hour", "from_date": "2026-01-01", "to_date": "2026-02-11"}, "invalid_request"),  # 1,008 buckets
    ({"summary": "day", "from_date": "2026-04-01"}, "missing_field"),
    ({"summary": "day", "from_date": "2026-4-1", "to_date": "2026-04-02"}, "invalid_field"),
    ({"summary": "day", "from_date": "2026-04-01", "to_date": "2026-04-02", "date": "2026-04-01"}, "invalid_request"),
    ({"summary": "day", "from_date": "2026-04-01", "to_date": "2026-04-02", "cursor": "bm9wZQ"}, "invalid_field"),
]


def test_a_bad_summary_request_gets_an_error_reply(service, client):
    service.start().wait_ready()
    client.subscribe_replies("app")
    for i, (body, code) in enumerate(BAD_SUMMARIES):
        reply = client.request("temp", "app", {"device_id": "t1", "request_id": f"r{i}", **body})
        assert reply["error"]["code"] == code and reply["request_id"] == f"r{i}", reply
        assert "buckets" not in reply


def test_the_catalogue_lists_every_device_with_what_the_commits_kept_up_to_date(db_service, client):
    db_service.start().wait_ready()
    client.subscribe_replies("app")
    readings = [("home/temperature", temperature(f"t{i}", n, DAYS[n % 3])) for i in range(3) for n in range(5)]
    readings += [("home/power", power("p1", "DG_ON", "2026-04-01T10:00:00")),
                 ("home/power", power("p1", "EB_OFF", "2026-04-02T09:00:00")),
                 ("home/power", power("p1", "EB_ON", "2026-04-01T08:00:00")),
                 ("home/fingerprint", fingerprint("door", "u1", "PASS", "2026-04-01T08:00:00")),
                 # a clock that was reset: rejected, counted, never the latest
                 ("home/temperature", temperature("t0", 0, "1970-01-01"))]
    for topic, body in readings:
        client.publish(topic, body, wait=False)
    wait_until(lambda: db_service.query("SELECT COUNT(*) FROM rejected_messages")[0][0] == 1, what="the rejection")
    reply = client.request("devices", "app", {"request_id": "c"})
    assert reply["count"] == len(reply["devices"]) == 5 and reply["request_id"] == "c" and "next" not in reply
    entries = {(e["type"], e["device_id"]): e for e in reply["devices"]}
    assert [e["type"] for e in reply["devices"]] == ["fingerprint", "power", "temperature", "temperature",
                                                     "temperature"]
    t0 = entries["temperature", "t0"]
    assert (t0["readings"], t0["first_seen"], t0["last_seen"], t0["clock_rejected"]) == (5, f"{DAYS[0]}T00:00:00",
                                                                                          f"{DAYS[2]}T00:00:02", 1)
    assert t0["state"] == "live" and t0["received_at"] is not None
    assert t0["latest"] == client.request("temp", "app", {"device_id": "t0", "latest": True})["records"][0]
    [rejected] = db_service.query("SELECT reason FROM rejected_messages")
    assert rejected[0].startswith("clock: ")
    p1 = entries["power", "p1"]
    assert p1["latest"] == {"ebstatus": "OFF", "dgstatus": "ON", "timestamp": "2026-04-02T09:00:00"}
    assert p1["latest"] == client.request("power", "app", {"device_id": "p1", "latest": True})["records"][0]
    assert (p1["readings"], p1["first_seen"], p1["state"]) == (3, "2026-04-01T08:00:00", None)  # power: no liveness
    assert entries["fingerprint", "door"]["latest"] == {"user_id": "u1", "authStatus": "PASS",
                                                        "timestamp": "2026-04-01T08:00:00"}
    # one type, and pages
    only = client.request("devices", "app", {"type": "temperature"})
    assert [e["device_id"] for e in only["devices"]] == ["t0", "t1", "t2"]
    seen, body = [], {"limit": 2}
    while True:
        page = client.request("devices", "app", body)
        seen += [(e["type"], e["device_id"]) for e in page["devices"]]
        if "next" not in page:
            break
        body = {"limit": 2, "cursor": page["next"]}
    assert seen == list(entries)
    for bad in ({"type": "humidity"}, {"limit": 0}, {"cursor": "x"}):
        assert "error" in client.request("devices", "app", bad)


# (zone, the first UTC hour, hours): readings every few minutes across a local midnight at +05:30, and
# across both of New York's DST changes (a skipped hour, a repeated one)
SITES = [("Asia/Kolkata", datetime(2026, 4, 1, 15, tzinfo=timezone.utc), 8),
         ("America/New_York", datetime(2026, 3, 8, 3, tzinfo=timezone.utc), 8),
         ("America/New_York", datetime(2026, 11, 1, 2, tzinfo=timezone.utc), 8)]


def sent(moment: datetime, zone: ZoneInfo, form: int) -> str:
    """The moment as devices stamp it: in UTC with `Z`, with the site's offset, or as site-local time."""
    if form == 0:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    local = moment.astimezone(zone)
    return local.isoformat() if form == 1 else local.replace(tzinfo=None).isoformat()


@pytest.mark.parametrize("zone_name,first,hours", SITES, ids=["kolkata-midnight", "new-york-spring", "new-york-fall"])
def test_with_a_site_time_zone_days_windows_and_summaries_are_the_sites(service, client, zone_name, first, hours):
    zone = ZoneInfo(zone_name)
    service.extra_env["SITE_TIMEZONE"] = zone_name
    service.start().wait_ready()
    client.subscribe_replies("app")
    rng = random.Random(hours + first.day)
    moments = sorted(first + timedelta(seconds=rng.randrange(hours * 3600)) for _ in range(120))
    forms = [i % 3 for i in range(len(moments))]
    # in the repeated hour a site-local stamp is ambiguous: those devices send an offset
    forms = [f if f != 2 or m.astimezone(zone).fold == 0 and (m + timedelta(hours=1)).astimezone(zone).fold == 0
             else 1 for m, f in zip(moments, forms)]
    temps = [temperature("t1", value=round(rng.uniform(-5, 35), 1), status=rng.choice(("HIGH", "LOW")),
                         timestamp=sent(m, zone, f)) for m, f in zip(moments, forms)]
    switches = [power("p1", rng.choice(("EB_ON", "EB_OFF", "DG_ON", "DG_OFF")), sent(m, zone, f))
                for m, f in zip(moments[::4], forms[::4])]
    end = first + timedelta(hours=hours + 1)  # both sources off after the range: the device's "now" is past it
    switches += [power("p1", s, sent(end, zone, 0)) for s in ("EB_OFF", "DG_OFF")]
    doors = [fingerprint("door", f"u{rng.randrange(4)}", rng.choice(("PASS", "FAIL")), sent(m, zone, f))
             for m, f in zip(moments[::3], forms[::3])]
    for topic, readings in (("home/temperature", temps), ("home/power", switches), ("home/fingerprint", doors)):
        publish_all(service, client, [(topic, r) for r in rng.sample(readings, len(readings))],
                    f"{topic[5:]}{'_status' if topic == 'home/power' else ''}_logs", len(readings))

    def local(timestamp: str) -> str:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        return (moment.astimezone(zone).replace(tzinfo=None) if moment.tzinfo else moment).isoformat()

    days = sorted({local(r["timestamp"])[:10] for r in temps})
    assert len(days) == 2  # the range crosses the site's midnight
    # the date column is the site's, and a day request for a site-local date has that day's readings
    stored = service.query("SELECT timestamp, date FROM temperature_logs")
    assert all(local(ts)[:10] == date for ts, date in stored) and len(stored) == len(temps)
    for day in days:
        records = day_records(client, {"device_id": "t1", "date": day, "limit": 25})
        assert sorted(r["timestamp"] for r in records) == sorted(ts for ts, date in stored if date == day)
        # a time window is the site's wall-clock time
        window = day_records(client, {"device_id": "t1", "date": day, "from": "00:30:00", "to": "02:59:59"})
        assert sorted(r["timestamp"] for r in window) == sorted(
            ts for ts, date in stored if date == day and "00:30:00" <= local(ts)[11:19] <= "02:59:59")
    latest = client.request("temp", "app", {"device_id": "t1", "latest": True})
    assert latest["date"] == local(latest["records"][0]["timestamp"])[:10] == days[-1]

    rows = [(t, h, s, local(ts)) for t, h, s, ts in
            service.query("SELECT temperature, humidity, status, timestamp FROM temperature_logs")]
    events = [(eb, dg, local(ts)) for eb, dg, ts in service.query(
        "SELECT ebstatus, dgstatus, timestamp FROM power_status_logs")]
    taps = [(u, a, local(ts)) for u, a, ts in service.query("SELECT user_id, auth_status, timestamp FROM fingerprint_logs")]
    for kind in ("hour", "day"):
        ask = {"summary": kind, "from_date": days[0], "to_date": days[-1]}
        assert summary(client, "temp", {"device_id": "t1", **ask})[0] == reference.temperature(kind, rows, *days)
        assert summary(client, "power", {"device_id": "p1", **ask})[0] == reference.power(kind, events, *days)
        assert summary(client, "fingerprint", {"device_id": "door", **ask})[0] == reference.fingerprint(kind, taps,
                                                                                                        *days)
    assert sum(b["readings"] for b in summary(client, "temp", {"device_id": "t1", "summary": "hour",
                                                               "from_date": days[0], "to_date": days[-1]})[0]) == 120


def day_records(client, body) -> list[dict]:
    """Every record of a day request, page after page."""
    records = []
    while True:
        reply = client.request("temp", "app", body)
        assert "error" not in reply, reply
        records += reply["records"]
        if "next" not in reply:
            return records
        body = {**body, "cursor": reply["next"]}
