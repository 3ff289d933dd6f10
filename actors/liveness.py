"""Liveness, pure: which devices are still reporting. A device is stale once it has been silent
(nothing stored from it) for longer than its type's `devices.<type>_stale_after`; "auto" is three
times the device's own usual interval between readings (by its own clock: a backlog delivered late
does not shorten it), and at least `devices.min_stale_after`. Types with 0 have no liveness.

After a start, a device is declared stale no sooner than its stale_after from that start: while the
service was down its devices were not silent, only unheard (the broker kept what they sent)."""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass, field
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


@dataclass
class Track:
    last_seen: str | None  # its latest timestamp, as sent
    received_at: str | None  # UTC, when that was stored
    heard: float  # when it was last heard (epoch seconds), or the start if that is later
    state: str
    intervals: collections.deque = field(default_factory=lambda: collections.deque(maxlen=INTERVALS_KEPT))


def epoch(utc: str) -> float:
    return datetime.fromisoformat(utc).replace(tzinfo=timezone.utc).timestamp()


class Liveness:
    def __init__(self, settings: DevicesSettings):
        self.settings = settings
        self.types = {name for name in DEVICE_TYPES if settings.stale_after(name)}
        self.devices: dict[tuple[str, str], Track] = {}

    def load(self, rows, started: float) -> None:
        """What the catalogue knows at start-up: (type, device_id, last_seen, received_at, state)."""
        for kind, device_id, last_seen, received_at, state in rows:
            if kind in self.types and received_at:
                heard = max(epoch(received_at), started) if state != STALE else epoch(received_at)
                self.devices[kind, device_id] = Track(last_seen, received_at, heard, state or LIVE)

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
            self.devices[kind, device_id] = Track(last_seen, received_at, now, LIVE)
            return Change(kind, device_id, LIVE, last_seen, received_at)
        if track.last_seen is not None and last_seen > track.last_seen:
            interval = _seconds_between(track.last_seen, last_seen)
            if interval is not None:
                track.intervals.append(interval / max(readings, 1))
        track.last_seen = max(last_seen, track.last_seen or last_seen)
        track.received_at, track.heard = received_at, now
        if track.state == LIVE:
            return None
        track.state = LIVE
        return Change(kind, device_id, LIVE, track.last_seen, received_at, STALE)

    def due(self, now: float, stored=lambda kind, device_id: None) -> list[Change]:
        """The devices that have gone stale by `now`. `stored(kind, device_id)`: what the catalogue
        says of it, (last_seen, received_at) or None: several instances share a database, and another
        may have stored what this one did not hear."""
        changes = []
        for (kind, device_id), track in self.devices.items():
            if track.state == LIVE and now - track.heard > self.stale_after(kind, track):
                latest = stored(kind, device_id)
                if latest is not None and latest[1] and latest[1] > (track.received_at or ""):
                    track.last_seen, track.received_at = latest
                    track.heard = epoch(latest[1])
                    if now - track.heard <= self.stale_after(kind, track):
                        continue
                track.state = STALE
                changes.append(Change(kind, device_id, STALE, track.last_seen, track.received_at, LIVE))
        return changes

    def next_due(self) -> float | None:
        """When the next live device goes stale if it stays silent (epoch seconds)."""
        return min((t.heard + self.stale_after(kind, t) for (kind, _), t in self.devices.items() if t.state == LIVE),
                   default=None)

    def stale_count(self) -> int:
        return sum(t.state == STALE for t in self.devices.values())


def _seconds_between(earlier: str, later: str) -> float | None:
    try:
        a, b = datetime.fromisoformat(earlier), datetime.fromisoformat(later)
        if (a.tzinfo is None) != (b.tzinfo is None):
            a, b = a.replace(tzinfo=None), b.replace(tzinfo=None)
        return (b - a).total_seconds()
    except ValueError:
        return None
