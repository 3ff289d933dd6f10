"""Handing readings on to the ingest actors, a batch per device type, in a commit window.

Every hand-over wakes the ingest actor and the writer, and ends in a commit with its fsync: at a
steady trickle, a reading handed on alone cost several times what its own work does. So readings
wait for others, up to `linger` seconds, and go at once when a commit's worth (GROUP_ROWS) is
here, when a request waits for them (read after arrival: `now`), or when the link closes. The
window also closes when the stream goes quiet for longer than its own pace says (four of its
gaps, at least QUIET): the tail of a burst does not wait out a window meant for a trickle."""

from __future__ import annotations

import asyncio
from typing import Callable

from actors.messages import Inbound, ReadingBatch
from actors.models import utc_now
from actors.peers import Peers

GROUP_ROWS = 100  # a commit costs about as much as writing this many rows: enough to share it
QUIET = 0.005  # the shortest pause that ends a window


class HandOver:
    def __init__(self, peers: Peers, linger: float, also: Callable[[], None]):
        """`also()`: run with every hand-over (the delivery limit's counts go with it)."""
        self.peers = peers
        self.linger = linger
        self.also = also
        self.hurried = False  # requests are waiting: no lingering (set by the traffic)
        self._readings: dict[str, list[Inbound]] = {}
        self._forget: dict[str, list[str]] = {}  # route -> fingerprints of readings that failed before
        self._count = 0
        self._first = self._last = 0.0  # when the window's first and latest readings arrived
        self._due: asyncio.Handle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def add(self, route: str, reading: Inbound, forget: tuple[str, ...] = ()) -> None:
        self._readings.setdefault(route, []).append(reading)
        if forget:
            self._forget.setdefault(route, []).extend(forget)
        self._count += 1
        self._last = self._loop.time()
        if self._count >= GROUP_ROWS or self.hurried:
            self.soon()
        elif self._due is None:
            self._first = self._last
            self._due = self._loop.call_at(self._last + min(QUIET, self.linger), self._check)
        elif self._count == 2 and isinstance(self._due, asyncio.TimerHandle):  # a pace now: check it sooner
            self._due.cancel()
            self._due = self._loop.call_at(self._last + min(QUIET, self.linger), self._check)

    def _check(self) -> None:
        """Close the window once `linger` has passed, or the stream has paused (see above)."""
        self._due = None
        pace = (self._last - self._first) / (self._count - 1) if self._count > 1 else self.linger
        close = min(self._first + self.linger, self._last + max(QUIET, 4 * pace))
        if self._loop.time() >= close:
            self.now()
        else:
            self._due = self._loop.call_at(close, self._check)

    def soon(self) -> None:
        """Hand on once the loop has parsed the rest of this socket read (it joins the batch)."""
        if self._due is None or isinstance(self._due, asyncio.TimerHandle):
            if self._due is not None:
                self._due.cancel()
            self._due = self._loop.call_soon(self.now)

    def now(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        readings, self._readings = self._readings, {}
        forget, self._forget = self._forget, {}
        self._count = 0
        received_at = utc_now()
        for route, items in readings.items():
            self.peers.tell(route, ReadingBatch(received_at, tuple(items), forget=tuple(forget.get(route, ()))))
        self.also()
