"""Liveness, pure: which devices are still reporting. A device is stale once it has been silent
(nothing stored from it) for longer than its type's `devices.<type>_stale_after`; "auto" is three
times the device's own usual interval between readings (by its own clock: a backlog delivered late
does not shorten it), and at least `devices.min_stale_after`. Types with 0 have no liveness.

After a start, a device is declared stale no sooner than its stale_after from that start: while the
service was down its devices were not silent, only unheard (the broker kept what they sent)."""

from __future__ import annotations

import heapq
import statistics
from array import array
from dataclasses import dataclass
from datetime import datetime, timezone

from actors.devices import DEVICE_TYPES
from actors.settings import DevicesSettings

INTERVALS_KEPT = 9  # the usual interval is the median of a device's latest intervals
LIVE, STALE = "live", "stale"


@dataclass(frozen=True, slots=True)
class Change:
    """A device's new state, to publish."""
    type: str
    device_id: str
    state: str
    last_seen: str | None
    received_at: str | None
    was: str | None = None  # its state before (None: a new device)


class Track:
    """What liveness keeps of one device: a few hundred bytes (deploy/README.md, "Fleet size")."""
    __slots__ = ("last_seen", "received_at", "heard", "state", "intervals", "due")

    def __init__(self, last_seen: str | None, received_at: str | None, heard: float, state: str):
        self.last_seen = last_seen  # its latest timestamp, as sent
        self.received_at = received_at  # UTC, when that was stored
        self.heard = heard  # when it was last heard (epoch seconds), or the start if that is later
        self.state = state
        self.intervals: array | None = None  # its latest intervals (s per reading), once it has one
        self.due: float | None = None  # its entry in the timer heap, while it is live


def epoch(utc: str) -> float:
    return datetime.fromisoformat(utc).replace(tzinfo=timezone.utc).timestamp()


class Liveness:
    """Each device's state, with a timer heap of when each live device would go stale: a reading,
    a check and the next wake-up cost O(log N) at most, whatever the fleet (a reading usually O(1):
    a device's entry is moved only when its deadline comes, or comes nearer)."""

    def __init__(self, settings: DevicesSettings):
        self.settings = settings
        self.types = {name for name in DEVICE_TYPES if settings.stale_after(name)}
        self.devices: dict[tuple[str, str], Track] = {}
        self.max_known = settings.max_known
        self.full = False  # max_known devices watched: new ones are not (logged once by the actor)
        self._heap: list[tuple[float, str, str]] = []  # (due, type, device_id); stale entries skipped
        self._stale = 0

    def load(self, rows, started: float) -> None:
        """What the catalogue knows at start-up: (type, device_id, last_seen, received_at, state),
        the most recently heard first (those past max_known are not watched)."""
        for kind, device_id, last_seen, received_at, state in rows:
            if kind in self.types and received_at and (kind, device_id) not in self.devices:
                heard = max(epoch(received_at), started) if state != STALE else epoch(received_at)
                if self._add(kind, device_id, Track(last_seen, received_at, heard, state or LIVE)) is None:
                    return

    def _add(self, kind: str, device_id: str, track: Track) -> Track | None:
        if len(self.devices) >= self.max_known:
            self.full = True
            return None
        self.devices[kind, device_id] = track
        if track.state == STALE:
            self._stale += 1
        else:
            self._arm(kind, device_id, track)
        return track

    def _arm(self, kind: str, device_id: str, track: Track) -> None:
        """Make sure the heap wakes us no later than the device's deadline."""
        due = track.heard + self.stale_after(kind, track)
        if track.due is None or due < track.due:
            track.due = due
            heapq.heappush(self._heap, (due, kind, device_id))
            if len(self._heap) > 2 * len(self.devices) + 1024:  # superseded entries: drop them
                self._heap = [(t.due, k, d) for (k, d), t in self.devices.items() if t.due is not None]
                heapq.heapify(self._heap)

    def stale_after(self, kind: str, track: Track) -> float:
        setting = self.settings.stale_after(kind)
        if setting != "auto":
            return setting
        usual = statistics.median(track.intervals) if track.intervals else 0.0
        return max(3 * usual, self.settings.min_stale_after)

    def seen(self, kind: str, device_id: str, last_seen: str, readings: int, received_at: str,
             now: float) -> Change | None:
        """Readings of the device were stored; a Change if it was stale (or is new)."""
        if kind not in self.types:
            return None
        track = self.devices.get((kind, device_id))
        if track is None:
            if self._add(kind, device_id, Track(last_seen, received_at, now, LIVE)) is None:
                return None
            return Change(kind, device_id, LIVE, last_seen, received_at)
        if track.last_seen is not None and last_seen > track.last_seen:
            interval = _seconds_between(track.last_seen, last_seen)
            if interval is not None:
                if track.intervals is None:
                    track.intervals = array("f")
                elif len(track.intervals) == INTERVALS_KEPT:
                    del track.intervals[0]
                track.intervals.append(interval / max(readings, 1))
        track.last_seen = max(last_seen, track.last_seen or last_seen)
        track.received_at, track.heard = received_at, now
        if track.state == LIVE:
            if track.intervals is not None:  # "auto" may have come nearer
                self._arm(kind, device_id, track)
            return None
        track.state = LIVE
        self._stale -= 1
        self._arm(kind, device_id, track)
        return Change(kind, device_id, LIVE, track.last_seen, received_at, STALE)

    def due(self, now: float, stored=lambda kind, device_id: None) -> list[Change]:
        """The devices that have gone stale by `now`. `stored(kind, device_id)`: what the catalogue
        says of it, (last_seen, received_at) or None: several instances share a database, and another
        may have stored what this one did not hear."""
        changes, heap = [], self._heap
        while heap and heap[0][0] < now:  # stale once silent for longer than stale_after
            due, kind, device_id = heapq.heappop(heap)
            track = self.devices.get((kind, device_id))
            if track is None or track.due != due:
                continue  # superseded by a nearer deadline, or stale already
            track.due = None
            if track.heard + self.stale_after(kind, track) >= now:
                self._arm(kind, device_id, track)  # heard since: its deadline moved on
                continue
            latest = stored(kind, device_id)
            if latest is not None and latest[1] and latest[1] > (track.received_at or ""):
                track.last_seen, track.received_at = latest
                track.heard = epoch(latest[1])
                if track.heard + self.stale_after(kind, track) >= now:
                    self._arm(kind, device_id, track)
                    continue
            track.state = STALE
            self._stale += 1
            changes.append(Change(kind, device_id, STALE, track.last_seen, track.received_at, LIVE))
        return changes

    def next_due(self) -> float | None:
        """When the next live device goes stale if it stays silent (epoch seconds); it may turn
        out to have been heard since, and is then put back for its new deadline."""
        heap = self._heap
        while heap and ((track := self.devices.get(heap[0][1:])) is None or track.due != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def stale_count(self) -> int:
        return self._stale


def _seconds_between(earlier: str, later: str) -> float | None:
    try:
        a, b = datetime.fromisoformat(earlier), datetime.fromisoformat(later)
        if (a.tzinfo is None) != (b.tzinfo is None):
            a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
        return (b - a).total_seconds()
    except ValueError:
        return None
