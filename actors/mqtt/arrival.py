"""Read after arrival: a request is answered with every reading the service received before it,
so it waits until those it may see are committed (a few ms: the writer's next commit): readings
of its device type whose raw payload names its device. While the database cannot be written
(locked, full), it waits READ_AFTER_ARRIVAL_WAIT at most, then is answered from what is stored."""

from __future__ import annotations

import asyncio
import collections
from typing import Callable

import orjson

from actors.devices import DeviceTypes
from actors.mqtt.inflight import Held, InFlight
from actors.protocol.messages import Request
from actors.protocol.requests import CATALOGUE
from actors.runtime.peers import ingest_name

READ_AFTER_ARRIVAL_WAIT = 1.0  # longest a request waits for the readings received before it


def sees(request: Request, types: DeviceTypes) -> tuple[str | None, bytes | None]:
    """The readings a request may see: the route of its device type (None: every type), and its
    device id as JSON (None: every device; so when it cannot be read here, and the query actor
    answers what is wrong with the request). The catalogue sees every device of the type it
    names, or of every type."""
    try:
        asked = orjson.loads(request.payload) if len(request.payload) <= 65536 else None
    except orjson.JSONDecodeError:
        asked = None
    asked = asked if isinstance(asked, dict) else {}
    if request.device == CATALOGUE:
        kind = asked.get("type")
        return (ingest_name(kind) if isinstance(kind, str) and kind in types else None), None
    device_id = asked.get("device_id")
    return ingest_name(request.device), orjson.dumps(device_id) if isinstance(device_id, str) else None


class WaitingRequests:
    def __init__(self, inflight: InFlight, hand_on: Callable[[Held], None], hurry: Callable[[bool], None],
                 types: DeviceTypes):
        """`hurry(True)` with each request held: what it waits for must be committed now;
        `hurry(False)` once none waits."""
        self.inflight = inflight
        self.hand_on = hand_on
        self.types = types
        self.hurry = hurry
        self._waiting: collections.deque[int] = collections.deque()  # ack ids, oldest first

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def must_wait(self, ack_id: int, request: Request) -> bool:
        return self.inflight.reading_before(ack_id, *sees(request, self.types))

    def hold(self, ack_id: int) -> None:
        self._waiting.append(ack_id)
        self._loop.call_later(READ_AFTER_ARRIVAL_WAIT, self.release, ack_id)
        self.hurry(True)

    def release(self, overdue: int = 0) -> None:
        """Hand on the waiting requests that no earlier reading holds up (and those up to
        `overdue`, which have waited long enough)."""
        waiting = self._waiting
        while waiting:
            ack_id = waiting[0]
            held = self.inflight.get(ack_id)
            if held is not None and ack_id > overdue and self.must_wait(ack_id, held.message):
                return
            waiting.popleft()
            if held is not None:  # else given up with a lost connection: it comes back
                self.hand_on(held)
        self.hurry(False)

    def clear(self) -> None:
        self._waiting.clear()
        self.hurry(False)
