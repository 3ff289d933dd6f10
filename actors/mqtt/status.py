"""What the service says about itself on the broker: its retained status (online, offline,
retiring, with version and start time) and its periodic stats, which also go to the log
(StatusReport: formatting and timing), and the heartbeat that gathers them from the writer and
feeds systemd's watchdog."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Callable

import orjson

from actors import __version__
from actors.mqtt.outbox import Outbox
from actors.protocol.messages import Availability, StatsRequest, WriterStats
from actors.runtime.counting import SECONDS_BUCKETS, Histogram
from actors.runtime.notify import notify, watchdog_interval
from actors.runtime.peers import WRITER, Peers, ingest_name
from actors.runtime.settings import StatusSettings
from actors.storage.models import utc_now

log = logging.getLogger(__name__)


class StatusReport:
    """What the process says about itself: its retained status, and the numbers of its stats (the
    stats topic, the log, and /metrics: one source, `numbers()`). It outlives a link that crashes.
    Everything it keeps is bounded: counts by device type, request kind and error code, histograms."""

    def __init__(self, client_id: str, settings: StatusSettings, clock=time.monotonic):
        self.client_id = client_id
        self.status_topic = f"home/status/{client_id}"
        self.stats_topic = f"home/stats/{client_id}"
        self.started_at = utc_now()
        self.connections = 0  # to the broker, since the service started
        self.connected = False  # to the broker, now
        self.received = 0  # messages taken since the service started (the high bits of ack ids)
        self.readings_in: Counter[str] = Counter()  # readings taken, by route (ingest/<type>)
        self.requests: Counter[tuple[str, str]] = Counter()  # (kind, "ok" or the error code)
        self.reply_seconds = Histogram()  # from a request's arrival to its reply
        self.restarts: Counter[str] = Counter()  # actor restarts, by actor (the query pool as one)
        self.housekept: dict[str, str] = {}  # "retention" / "backup" -> UTC of the latest success
        self.links = 0  # MQTT links started: more than one means the link crashed and was restarted
        self.went_stale = self.live_again = self.new_devices = self.stale_now = self.watched = 0  # devices' liveness
        self.by_type: tuple[tuple[str, int, int], ...] = ()  # (type, watched, stale)
        self.latest: dict | None = None  # the latest numbers (see numbers())
        self.latest_at = 0.0  # when the writer gave them (clock): it answers only while it makes progress
        self.refresh: float | None = None  # seconds between the writer's numbers while /metrics is served
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

    def replied(self, kind: str, outcome: str, seconds: float | None = None) -> None:
        """A request answered ("ok") or refused with an error code; `seconds` since it came."""
        self.requests[kind, outcome] += 1
        if seconds is not None:
            self.reply_seconds.observe(seconds)

    def restarted(self, actor: str) -> None:
        self.restarts[actor.split("/")[0] if actor.startswith("query/") else actor] += 1

    def availability_changed(self, changed: Availability) -> None:
        self.new_devices += changed.new
        self.went_stale += changed.went_stale
        self.live_again += changed.live_again
        self.stale_now, self.watched, self.by_type = changed.stale_now, changed.watched, changed.by_type

    def numbers(self, writer: WriterStats, in_hand: int, outbox: Outbox | None = None) -> dict:
        """Every number the service reports, now: from the writer's latest stats and the link's counts."""
        errors = sum(n for (_, outcome), n in self.requests.items() if outcome != "ok")
        requests: dict[str, dict[str, int]] = {}
        for (kind, outcome), n in sorted(self.requests.items()):
            requests.setdefault(kind, {})[outcome] = n
        rejected_by: dict[str, dict[str, int]] = {}
        for kind, reason, n in writer.rejected_by:
            rejected_by.setdefault(kind, {})[reason] = n
        counts, total = writer.commit_seconds
        return {
            "time": utc_now(), "version": __version__, "started_at": self.started_at, "connected": self.connected,
            "received": {name: self.readings_in[ingest_name(name)] for name, _ in writer.stored},
            "stored": dict(writer.stored), "rejected": writer.rejected, "rejected_by": rejected_by,
            "requests": {"answered": sum(self.requests.values()), "errors": errors, "by_kind": requests},
            "reply_seconds": _histogram(SECONDS_BUCKETS, *self.reply_seconds.snapshot()),
            "commits": writer.commits, "commit_failures": writer.commit_failures,
            "commit_seconds": _histogram(SECONDS_BUCKETS, counts, total),
            "writer_backlog": writer.backlog, "in_hand": in_hand,
            "commit_ms": {"last": writer.last_commit_ms, "max": writer.max_commit_ms},
            "database_bytes": writer.database_bytes, "wal_bytes": writer.wal_bytes,
            "wal_checkpoints": writer.checkpoints, "last_checkpoint_at": writer.last_checkpoint_at,
            "last_retention_at": self.housekept.get("retention"), "last_backup_at": self.housekept.get("backup"),
            "last_stored_at": dict(writer.last_stored_at),
            "connections": self.connections, "link_restarts": self.link_restarts,
            "actor_restarts": dict(sorted(self.restarts.items())),
            "outbox": {"waiting": len(outbox) if outbox else 0, "peak": outbox.peak if outbox else 0,
                       "dropped": outbox.dropped if outbox else 0},
            "availability": {"stale_now": self.stale_now, "went_stale": self.went_stale, "live_again": self.live_again,
                             "new_devices": self.new_devices, "watched": self.watched,
                             "by_type": {kind: {"watched": w, "stale": st} for kind, w, st in self.by_type}},
            # bounded whatever the fleet: totals by type, and the worst devices (actors/runtime/counting.py)
            "clock_rejected_total": dict(writer.wrong_clock_totals),
            "clock_rejected": _by_type(writer.wrong_clocks)}

    def stats(self, writer: WriterStats, in_hand: int, outbox: Outbox | None = None) -> bytes | None:
        """Keep the numbers as they are now (for /metrics); the stats to publish, or None if they
        are not due yet (logged too, when that is due)."""
        now = self._clock()
        self.latest, self.latest_at = self.numbers(writer, in_hand, outbox), now
        if now < self._next_stats:
            return None
        self._next_stats = now + self._settings.stats_interval
        numbers = self.latest
        if now >= self._next_log:
            self._next_log = now + self._settings.log_interval
            log.info("stats: stored %s; rejected %d; requests %d (%d errors); commit failures %d; "
                     "backlog %d rows; commit %.1f ms (max %.1f); database %.1f MiB (WAL %.1f MiB)",
                     ", ".join(f"{k} {v}" for k, v in writer.stored), writer.rejected,
                     numbers["requests"]["answered"], numbers["requests"]["errors"], writer.commit_failures,
                     writer.backlog, writer.last_commit_ms, writer.max_commit_ms, writer.database_bytes / 2**20,
                     writer.wal_bytes / 2**20)
        return orjson.dumps(numbers)


def _histogram(bounds: tuple[float, ...], counts: tuple[int, ...], total: float) -> dict:
    """A histogram as the stats show it: each bucket's upper bound ("+Inf" last) and count, and the sum."""
    return {"le": [*bounds, "+Inf"], "counts": list(counts) or [0] * (len(bounds) + 1), "sum": round(total, 6)}


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
        self._every = min(every, self._watchdog or every, report.refresh or every)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ask()

    def _ask(self) -> None:
        self.peers.tell(WRITER, StatsRequest())  # the writer answers with WriterStats
        self._loop.call_later(self._every, self._ask)

    def answered(self, writer: WriterStats) -> None:
        if self._watchdog:
            notify("WATCHDOG=1")
        if (stats := self.report.stats(writer, self.in_hand(), self.outbox)) is not None:
            self.outbox.send(self.report.stats_topic, stats, retain=True)
