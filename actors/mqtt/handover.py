"""Handing readings on to the ingest actors, a batch per device type, in a commit window.

Every hand-over wakes the ingest actor and the writer, and ends in a commit with its fsync: at a
steady trickle, a reading handed on alone cost several times what its own work does. So readings
wait for others, up to `linger` seconds, and go at once when a commit's worth (GROUP_ROWS) is
here, when a request waits for them (read after arrival: `now`), or when the link closes. A
reading that no other has joined after half the window goes then: waiting longer rarely pays for
a stream that sparse. A burst (readings BURST_GAP apart or closer, on average) goes once it
pauses for four of its gaps (at least QUIET): its tail does not wait out a window meant for a
trickle.

The window's timer fires only when the window may close: every wake-up of the loop costs about
as much as handling a reading, and at a trickle they were most of the link's CPU. So a trickle
never arms the pause check, and a burst that goes on finds it armed ever later (doubling)."""

from __future__ import annotations

import asyncio
from typing import Callable

from actors.protocol.messages import Inbound, ReadingBatch
from actors.runtime.peers import Peers
from actors.storage.models import utc_now

GROUP_ROWS = 100  # a commit costs about as much as writing this many rows: enough to share it
QUIET = 0.005  # the shortest pause that ends a burst's window
BURST_GAP = 0.002  # readings this close together, on average, are a burst (500/s and more)


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
        self._checks = 0  # times the window's timer found a burst still going
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
            self._first, self._checks = self._last, 0
            self._due = self._loop.call_at(self._close(), self._check)
        elif self._count == 2 and isinstance(self._due, asyncio.TimerHandle):  # company: the window changes
            self._due.cancel()
            self._due = self._loop.call_at(self._close(), self._check)

    def _close(self) -> float:
        """When the window closes, as far as its readings tell (see above)."""
        if self._count == 1:
            return self._first + self.linger / 2
        close = self._first + self.linger
        if (pace := (self._last - self._first) / (self._count - 1)) <= BURST_GAP:
            close = min(close, self._last + max(QUIET, 4 * pace) * 2 ** self._checks)
        return close

    def _check(self) -> None:
        self._due = None
        if self._loop.time() >= self._close():
            self.now()
        else:
            self._checks += 1
            self._due = self._loop.call_at(self._close(), self._check)

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
