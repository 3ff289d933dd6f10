"""What the service says about itself on the broker: its retained status (online, offline,
retiring, with version and start time) and its periodic stats, which also go to the log
(StatusReport: formatting and timing), and the heartbeat that gathers them from the writer and
feeds systemd's watchdog."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import orjson

from actors import __version__
from actors.messages import Availability, StatsRequest, WriterStats
from actors.models import utc_now
from actors.mqtt.outbox import Outbox
from actors.notify import notify, watchdog_interval
from actors.peers import WRITER, Peers
from actors.settings import StatusSettings

log = logging.getLogger(__name__)


class StatusReport:
    def __init__(self, client_id: str, settings: StatusSettings, clock=time.monotonic):
        self.client_id = client_id
        self.status_topic = f"home/status/{client_id}"
        self.stats_topic = f"home/stats/{client_id}"
        self.started_at = utc_now()
        self.answered = self.errors = 0  # requests answered, of which error replies
        self.connections = 0  # to the broker, since the service started
        self.received = 0  # messages taken since the service started (the high bits of ack ids)
        self.links = 0  # MQTT links started: more than one means the link crashed and was restarted
        self.went_stale = self.live_again = self.new_devices = self.stale_now = self.watched = 0  # devices' liveness
        self._settings = settings
        self._clock = clock
        self._next_stats = clock() + settings.stats_interval
        self._next_log = clock() + settings.log_interval

    def status(self, state: str, reason: str | None = None) -> bytes:
        status = {"state": state, "client_id": self.client_id, "version": __version__, "started_at": self.started_at,
                  "connections": self.connections}
        return orjson.dumps(status if reason is None else {**status, "reason": reason})

    @property
    def link_restarts(self) -> int:
        return max(0, self.links - 1)

    def link_started(self) -> None:
        self.links += 1
        if self.links > 1:
            log.warning("the MQTT link runs again after a crash (%d link restarts since the service started)",
                        self.link_restarts)

    def availability_changed(self, changed: Availability) -> None:
        self.new_devices += changed.new
        self.went_stale += changed.went_stale
        self.live_again += changed.live_again
        self.stale_now, self.watched = changed.stale_now, changed.watched

    def stats(self, writer: WriterStats, connected: bool, in_hand: int, outbox: Outbox | None = None) -> bytes | None:
        """The stats to publish now, or None if they are not due yet (logged too, when that is due)."""
        now = self._clock()
        if now < self._next_stats:
            return None
        self._next_stats = now + self._settings.stats_interval
        if now >= self._next_log:
            self._next_log = now + self._settings.log_interval
            log.info("stats: stored %s; rejected %d; requests %d (%d errors); commit failures %d; "
                     "backlog %d rows; commit %.1f ms (max %.1f); database %.1f MiB (WAL %.1f MiB)",
                     ", ".join(f"{k} {v}" for k, v in writer.stored), writer.rejected, self.answered,
                     self.errors, writer.commit_failures, writer.backlog, writer.last_commit_ms,
                     writer.max_commit_ms, writer.database_bytes / 2**20, writer.wal_bytes / 2**20)
        return orjson.dumps({
            "time": utc_now(), "version": __version__, "started_at": self.started_at, "connected": connected,
            "stored": dict(writer.stored), "rejected": writer.rejected,
            "requests": {"answered": self.answered, "errors": self.errors},
            "commit_failures": writer.commit_failures, "writer_backlog": writer.backlog, "in_hand": in_hand,
            "commit_ms": {"last": writer.last_commit_ms, "max": writer.max_commit_ms},
            "database_bytes": writer.database_bytes, "wal_bytes": writer.wal_bytes,
            "wal_checkpoints": writer.checkpoints, "last_stored_at": dict(writer.last_stored_at),
            "connections": self.connections, "link_restarts": self.link_restarts,
            "outbox": {"waiting": len(outbox) if outbox else 0, "peak": outbox.peak if outbox else 0,
                       "dropped": outbox.dropped if outbox else 0},
            "availability": {"stale_now": self.stale_now, "went_stale": self.went_stale, "live_again": self.live_again,
                             "new_devices": self.new_devices, "watched": self.watched},
            # bounded whatever the fleet: totals by type, and the worst devices (actors/counting.py)
            "clock_rejected_total": dict(writer.wrong_clock_totals),
            "clock_rejected": _by_type(writer.wrong_clocks)})


def _by_type(counts) -> dict[str, dict[str, int]]:
    """(type, device_id, n) as {type: {device_id: n}}."""
    by_type: dict[str, dict[str, int]] = {}
    for kind, device_id, n in counts:
        by_type.setdefault(kind, {})[device_id] = n
    return by_type


class Heartbeat:
    """Asks the writer for its stats every stats_interval (more often under a systemd watchdog)
    and, with each answer, feeds the watchdog and publishes the stats when due. The writer
    answers only while it makes progress, so a stuck writer gets the process restarted."""

    def __init__(self, report: StatusReport, every: float, peers: Peers, outbox: Outbox,
                 in_hand: Callable[[], int]):
        self.report = report
        self.peers = peers
        self.outbox = outbox
        self.in_hand = in_hand
        self._watchdog = watchdog_interval()
        self._every = min(every, self._watchdog or every)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ask()

    def _ask(self) -> None:
        self.peers.tell(WRITER, StatsRequest())  # the writer answers with WriterStats
        self._loop.call_later(self._every, self._ask)

    def answered(self, writer: WriterStats) -> None:
        if self._watchdog:
            notify("WATCHDOG=1")
        if (stats := self.report.stats(writer, self.outbox.connected, self.in_hand(), self.outbox)) is not None:
            self.outbox.send(self.report.stats_topic, stats, retain=True)
