"""Liveness, pure (actors/protocol/liveness.py): when a device is stale, without a broker or a clock."""

import dataclasses

from actors.protocol.liveness import LIVE, STALE, Liveness, epoch
from actors.runtime.settings import load_settings

DEVICES = load_settings(environ={}).devices  # temperature "auto", at least 300 s; power and fingerprint off
T0 = epoch("2026-04-01 00:00:00")


def test_auto_is_three_times_the_devices_usual_interval_by_its_own_clock_and_at_least_the_minimum():
    live = Liveness(DEVICES)
    assert live.types == {"temperature"}
    new = live.seen("temperature", "t1", "2026-04-01T00:00:00", 1, "2026-04-01 00:00:00", T0)
    assert (new.state, new.was) == (LIVE, None)
    # readings every 10 minutes by the device's clock, delivered in one backlog: the interval is still 10 min
    for i in range(1, 4):
        assert live.seen("temperature", "t1", f"2026-04-01T00:{10 * i}:00", 1, "2026-04-01 00:00:05", T0 + 5) is None
    assert live.stale_after("temperature", "t1") == 1800
    # checked at the end of the second of its first deadline, when the device's own is found
    assert live.next_due() == T0 + 301
    assert live.due(T0 + 301) == [] and live.next_due() == T0 + 5 + 1801
    assert live.due(T0 + 5 + 1800) == []
    [stale] = live.due(T0 + 5 + 1801)
    assert (stale.state, stale.was, stale.last_seen) == (STALE, LIVE, "2026-04-01T00:30:00")
    assert live.due(T0 + 9999) == []  # announced once
    back = live.seen("temperature", "t1", "2026-04-01T01:00:00", 1, "2026-04-01 01:00:00", T0 + 3600)
    assert (back.state, back.was) == (LIVE, STALE) and live.stale_count() == 0
    # a device sending every second still gets the minimum
    for s in range(5):
        live.seen("temperature", "fast", f"2026-04-01T00:00:0{s}", 1, "2026-04-01 00:00:00", T0)
    assert live.stale_after("temperature", "fast") == 300


def test_after_a_start_a_device_is_stale_no_sooner_than_its_stale_after_and_what_was_stale_stays_so():
    live = Liveness(dataclasses.replace(DEVICES, by_type={**DEVICES.by_type, "power": 60}))
    started = T0 + 86400  # the service was down for a day
    live.load([("temperature", "t1", "2026-04-01T00:00:00", "2026-04-01 00:00:00", "live"),
               ("temperature", "t2", "2026-04-01T00:00:00", "2026-04-01 00:00:00", "stale"),
               ("power", "p1", "2026-04-01T00:00:00", "2026-04-01 00:00:00", "live"),
               ("fingerprint", "f1", "2026-04-01T00:00:00", "2026-04-01 00:00:00", None)], started)
    assert (live.state("temperature", "t1"), live.state("temperature", "t2"), live.state("power", "p1"),
            live.state("fingerprint", "f1"), len(live)) == (LIVE, STALE, LIVE, None, 3)
    assert live.due(started + 59) == []
    assert [c.device_id for c in live.due(started + 61)] == ["p1"]
    assert [c.device_id for c in live.due(started + 301)] == ["t1"]
    assert live.seen("fingerprint", "f1", "2026-04-02T00:00:00", 1, "2026-04-02 00:00:00", started) is None


def test_a_device_another_instance_heard_is_not_stale():
    live = Liveness(dataclasses.replace(DEVICES, by_type={**DEVICES.by_type, "temperature": 60}))
    live.seen("temperature", "t1", "2026-04-01T00:00:00", 1, "2026-04-01 00:00:00", T0)
    # the other instance stored a reading 50 s later (its commit time, in the shared catalogue)
    catalogue = {("temperature", "t1"): ("2026-04-01T00:00:50", "2026-04-01 00:00:50")}
    assert live.due(T0 + 61, lambda kind, device_id: catalogue.get((kind, device_id))) == []
    assert live.next_due() == T0 + 111  # 60 s after the other instance's reading
    [stale] = live.due(T0 + 111, lambda kind, device_id: catalogue.get((kind, device_id)))
    assert stale.last_seen == "2026-04-01T00:00:50" and stale.received_at == "2026-04-01 00:00:50"


def test_a_mass_stale_is_found_in_one_check_and_the_wheel_stays_bounded():
    live = Liveness(dataclasses.replace(DEVICES, by_type={**DEVICES.by_type, "temperature": 60}))
    for n in range(20_000):
        live.seen("temperature", f"t{n}", "2026-04-01T00:00:00", 1, "2026-04-01 00:00:00", T0)
    for round_ in range(1, 6):  # every device reports again: deadlines move on without new heap entries
        for n in range(20_000):
            live.seen("temperature", f"t{n}", f"2026-04-01T00:0{round_}:00", 1, "2026-04-01 00:00:00", T0 + round_)
    assert live._entries <= 2 * len(live) + 1024
    assert live.due(T0 + 61) == [] and live.next_due() == T0 + 5 + 61  # put back for their new deadlines
    changes = live.due(T0 + 66)
    assert len(changes) == 20_000 and live.stale_count() == 20_000 and live.next_due() is None


def test_past_max_known_devices_new_ones_are_not_watched_and_those_watched_stay_so():
    live = Liveness(dataclasses.replace(DEVICES, by_type={**DEVICES.by_type, "temperature": 60}, max_known=3))
    live.load([("temperature", f"old{n}", "2026-04-01T00:00:00", "2026-04-01 00:00:00", "live") for n in range(2)], T0)
    assert live.seen("temperature", "new1", "2026-04-01T00:00:00", 1, "2026-04-01 00:00:00", T0) is not None
    assert not live.full
    assert live.seen("temperature", "new2", "2026-04-01T00:00:00", 1, "2026-04-01 00:00:00", T0) is None
    assert live.full and len(live) == 3
    assert {c.device_id for c in live.due(T0 + 61)} == {"old0", "old1", "new1"}
