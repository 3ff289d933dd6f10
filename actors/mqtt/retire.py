"""Retiring an instance for good (`system.py --retire`): it stops taking new messages, stores and
answers what the broker kept for its session, then ends the session, so that the broker stops
keeping a share of new messages for an instance that will not come back."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from actors.mqtt.outbox import Outbox
from actors.mqtt.status import StatusReport

log = logging.getLogger(__name__)
# The broker sends what it kept for the session as fast as acknowledgements free the window, so
# this long with nothing in hand and nothing arriving means it has all been handed over.
HANDED_OVER_AFTER = 3.0


class Retirement:
    def __init__(self, traffic, outbox: Outbox, report: StatusReport, topics: list[str],
                 end_session: Callable[[], Awaitable[bool]], again: Callable[[], None], on_retired: Callable[[], None]):
        """`end_session()`: disconnect with Session Expiry 0, True once the broker confirmed it;
        `again()`: drop the connection, to resume the session and hand over again."""
        self.traffic = traffic
        self.outbox = outbox
        self.report = report
        self.topics = topics
        self.end_session = end_session
        self.again = again
        self.on_retired = on_retired
        self._handing_over: asyncio.Task | None = None

    def connected(self, client) -> None:
        """Instead of subscribing: no new readings or requests come to this instance."""
        client.unsubscribe(self.topics)
        self.outbox.keep(self.report.status_topic, self.report.status("retiring"), urgent=True)

    def unsubscribed(self) -> None:
        if self._handing_over is None:
            log.info("retiring: unsubscribed (no new readings or requests come to this instance); "
                     "storing and answering what the broker kept for it")
            self._handing_over = asyncio.get_running_loop().create_task(self._hand_over())

    async def _hand_over(self) -> None:
        """Once the broker has handed over all it kept for the session (delivered even after
        unsubscribing) and all of it is committed or answered, clear the retained status and
        stats and end the session."""
        traffic = self.traffic
        seen, quiet_since = self.report.received, time.monotonic()
        while time.monotonic() - quiet_since < HANDED_OVER_AFTER:
            await asyncio.sleep(0.1)
            if self.report.received != seen or traffic.inflight or not self.outbox.connected:
                seen, quiet_since = self.report.received, time.monotonic()
        for topic in (self.report.status_topic, self.report.stats_topic):
            self.outbox.keep(topic, b"", urgent=True)  # an empty retained message deletes it
        while self.outbox and self.outbox.connected:
            await asyncio.sleep(0.02)
        if await self.end_session():
            log.info("retired: %d messages the broker kept for %s stored or answered, and its session "
                     "ended; this instance may be removed", self.report.received, self.report.client_id)
            self.on_retired()
            return
        log.warning("the broker did not confirm the end of the session; trying again")
        self._handing_over = None
        self.again()
