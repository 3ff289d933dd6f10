"""Liveness, pure: which devices are still reporting. A device is stale once it has been silent
(nothing stored from it) for longer than its type's `devices.<type>_stale_after`; "auto" is three
times the device's own usual interval between readings (by its own clock: a backlog delivered late
does not shorten it), and at least `devices.min_stale_after`. Types with 0 have no liveness.

After a start, a device is declared stale no sooner than its stale_after from that start: while the
service was down its devices were not silent, only unheard (the broker kept what they sent).

A fleet costs little here: each device is a slot in a few flat arrays (about 150 bytes with its id
and its entry in the index; deploy/README.md, "Fleet size"), and the deadlines sit in a timer
wheel of one-second buckets, so that a reading costs O(1) (a deadline that moves later is only
looked at when its old bucket comes due), a check O(devices due), and the next wake-up O(log
buckets). A device is declared stale in the first check after its deadline, at most a second late."""

from __future__ import annotations

import heapq
import math
import statistics
from array import array
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from actors.runtime.settings import DevicesSettings

INTERVALS_KEPT = 9  # the usual interval is the median of a device's latest intervals
LIVE, STALE = "live", "stale"
NEVER = 0.0  # the deadline of a device that is not armed (stale)
NO_INTERVALS = array("f", bytes(4 * INTERVALS_KEPT))


@dataclass(frozen=True, slots=True)
class Change:
    """A device's new state, to publish."""
    type: str
    device_id: str
    state: str
    last_seen: str | None
    received_at: str | None
    was: str | None = None  # its state before (None: a new device)


def epoch(utc: str) -> float:
    return datetime.fromisoformat(utc).replace(tzinfo=timezone.utc).timestamp()


def own_clock(timestamp: str) -> float:
    """A device's timestamp on its own clock (local time as sent, its offset ignored), in seconds."""
    try:
        return datetime.fromisoformat(timestamp).replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return math.nan


class Liveness:
    def __init__(self, settings: DevicesSettings):
        self.settings = settings
        self.types = {name for name, after in settings.by_type.items() if after}
        self.max_known = settings.max_known
        self.full = False  # max_known devices watched: new ones are not (logged once by the actor)
        self._kinds = sorted(self.types)
        self._index: dict[str, dict[str, int]] = {kind: {} for kind in self._kinds}  # device id -> slot
        # per slot: its type, id, latest timestamp (own_clock), when heard, deadline, stale or not,
        # its latest intervals (a ring of INTERVALS_KEPT) and how many it has
        self._kind = bytearray()
        self._ids: list[str] = []
        self._seen, self._heard, self._due = array("d"), array("d"), array("d")
        self._stale = bytearray()
        self._intervals, self._kept = array("f"), bytearray()
        self._wheel: dict[int, array] = {}  # second -> slots whose deadline falls in it (some moved on)
        self._seconds: list[int] = []  # the wheel's seconds, a heap
        self._entries = 0  # slots in the wheel, moved-on ones included
        self._stale_by = dict.fromkeys(self._kinds, 0)  # devices stale now, by type
        self._watched_by = dict.fromkeys(self._kinds, 0)

    def __len__(self) -> int:
        """Devices watched."""
        return len(self._ids)

    def state(self, kind: str, device_id: str) -> str | None:
        slot = self._index.get(kind, {}).get(device_id)
        return None if slot is None else STALE if self._stale[slot] else LIVE

    def load(self, rows, started: float) -> None:
        """What the catalogue knows at start-up: (type, device_id, last_seen, received_at, state),
        the most recently heard first (those past max_known are not watched)."""
        for kind, device_id, last_seen, received_at, state in rows:
            if kind in self.types and received_at and device_id not in self._index[kind]:
                stale = state == STALE
                heard = epoch(received_at) if stale else max(epoch(received_at), started)
                if self._add(kind, device_id, own_clock(last_seen or ""), heard, stale) is None:
                    return

    def _add(self, kind: str, device_id: str, seen: float, heard: float, stale: bool) -> int | None:
        if len(self._ids) >= self.max_known:
            self.full = True
            return None
        slot = len(self._ids)
        self._index[kind][device_id] = slot
        self._kind.append(self._kinds.index(kind))
        self._ids.append(device_id)
        self._seen.append(seen)
        self._heard.append(heard)
        self._due.append(NEVER)
        self._stale.append(stale)
        self._intervals.extend(NO_INTERVALS)
        self._kept.append(0)
        self._watched_by[kind] += 1
        if stale:
            self._stale_by[kind] += 1
        else:
            self._arm(slot)
        return slot

    def _arm(self, slot: int) -> None:
        """Make sure the wheel wakes us no later than the device's deadline."""
        due = self._heard[slot] + self._stale_after(slot)
        if self._due[slot] == NEVER or due < self._due[slot]:
            self._due[slot] = due
            second = int(due)
            if (bucket := self._wheel.get(second)) is None:
                bucket = self._wheel[second] = array("I")
                heapq.heappush(self._seconds, second)
            bucket.append(slot)
            self._entries += 1
            if self._entries > 2 * len(self._ids) + 1024:
                self._rebuild()

    def _rebuild(self) -> None:
        """Drop the entries of deadlines that moved on."""
        self._wheel.clear()
        for slot, due in enumerate(self._due):
            if due != NEVER:
                self._wheel.setdefault(int(due), array("I")).append(slot)
        self._seconds = list(self._wheel)
        heapq.heapify(self._seconds)
        self._entries = sum(len(bucket) for bucket in self._wheel.values())

    def _stale_after(self, slot: int) -> float:
        setting = self.settings.stale_after(self._kinds[self._kind[slot]])
        if setting != "auto":
            return setting
        kept = self._kept[slot]
        usual = statistics.median(self._intervals[slot * INTERVALS_KEPT:slot * INTERVALS_KEPT + kept]) if kept else 0.0
        return max(3 * usual, self.settings.min_stale_after)

    def stale_after(self, kind: str, device_id: str) -> float:
        """How long the device may be silent before it is stale."""
        return self._stale_after(self._index[kind][device_id])

    def seen(self, kind: str, device_id: str, last_seen: str, readings: int, received_at: str,
             now: float) -> Change | None:
        """Readings of the device were stored; a Change if it was stale (or is new)."""
        if kind not in self.types:
            return None
        seen = own_clock(last_seen)
        slot = self._index[kind].get(device_id)
        if slot is None:
            if self._add(kind, device_id, seen, now, False) is None:
                return None
            return Change(kind, device_id, LIVE, last_seen, received_at)
        if seen > self._seen[slot]:  # (nan, never)
            self._interval(slot, (seen - self._seen[slot]) / max(readings, 1))
            self._seen[slot] = seen
        elif math.isnan(self._seen[slot]):
            self._seen[slot] = seen
        self._heard[slot] = now
        if not self._stale[slot]:
            if self._kept[slot]:  # "auto" may have come nearer
                self._arm(slot)
            return None
        self._stale[slot] = False
        self._stale_by[kind] -= 1
        self._arm(slot)
        return Change(kind, device_id, LIVE, last_seen, received_at, STALE)

    def _interval(self, slot: int, seconds: float) -> None:
        kept, base = self._kept[slot], slot * INTERVALS_KEPT
        if kept < INTERVALS_KEPT:
            self._intervals[base + kept] = seconds
            self._kept[slot] = kept + 1
        else:  # the oldest goes: the ring's order does not matter to a median
            self._intervals[base:base + INTERVALS_KEPT - 1] = self._intervals[base + 1:base + INTERVALS_KEPT]
            self._intervals[base + INTERVALS_KEPT - 1] = seconds

    def due(self, now: float, stored=lambda kind, device_id: None) -> list[Change]:
        """The devices that have gone stale by `now` (those whose deadline's second has passed).
        `stored(kind, device_id)`: what the catalogue says of it, (last_seen, received_at) or None:
        several instances share a database, and another may have stored what this one did not hear;
        it is also what the announcement says."""
        changes = []
        while self._seconds and self._seconds[0] + 1 <= now:
            second = heapq.heappop(self._seconds)
            bucket = self._wheel.pop(second)
            self._entries -= len(bucket)
            for slot in bucket:
                if self._stale[slot] or int(self._due[slot]) != second:
                    continue  # stale already, or armed again for a nearer deadline
                self._due[slot] = NEVER
                if self._heard[slot] + self._stale_after(slot) >= now:
                    self._arm(slot)  # heard since: its deadline moved on
                    continue
                kind, device_id = self._kinds[self._kind[slot]], self._ids[slot]
                latest = stored(kind, device_id)
                if latest is not None and latest[1] and epoch(latest[1]) > self._heard[slot]:
                    self._heard[slot] = epoch(latest[1])  # another instance stored a reading since
                    if self._heard[slot] + self._stale_after(slot) >= now:
                        self._arm(slot)
                        continue
                self._stale[slot] = True
                self._stale_by[kind] += 1
                last_seen, received_at = latest if latest is not None else self._described(slot)
                changes.append(Change(kind, device_id, STALE, last_seen, received_at, LIVE))
        return changes

    def _described(self, slot: int) -> tuple[str | None, str]:
        """(last_seen, received_at) from what is kept here, when the catalogue cannot say."""
        seen = self._seen[slot]
        last_seen = None if math.isnan(seen) else \
            (datetime(1970, 1, 1) + timedelta(seconds=seen)).isoformat()
        return last_seen, datetime.fromtimestamp(self._heard[slot], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    def next_due(self) -> float | None:
        """When to check next (epoch seconds): the end of the second of the earliest deadline; the
        device may turn out to have been heard since, and is then put back for its new one."""
        return self._seconds[0] + 1 if self._seconds else None

    def stale_count(self) -> int:
        return sum(self._stale_by.values())

    def by_type(self) -> tuple[tuple[str, int, int], ...]:
        """(type, devices watched, of which stale) of each type with liveness."""
        return tuple((kind, self._watched_by[kind], self._stale_by[kind]) for kind in self._kinds)
