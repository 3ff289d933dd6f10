"""What the service says about itself on the broker: its retained status (online, offline,
retiring, with version and start time) and its periodic stats, which also go to the log. Pure
formatting and timing; the session publishes."""

from __future__ import annotations

import logging
import time

import orjson

from actors import __version__
from actors.messages import WriterStats
from actors.models import utc_now
from actors.settings import StatusSettings

log = logging.getLogger(__name__)


class StatusReport:
    def __init__(self, client_id: str, settings: StatusSettings, clock=time.monotonic):
        self.client_id = client_id
        self.status_topic = f"home/status/{client_id}"
        self.stats_topic = f"home/stats/{client_id}"
        self.started_at = utc_now()
        self.answered = self.errors = 0  # requests answered, of which error replies
        self._settings = settings
        self._clock = clock
        self._next_stats = clock() + settings.stats_interval
        self._next_log = clock() + settings.log_interval

    def status(self, state: str, reason: str | None = None) -> bytes:
        status = {"state": state, "client_id": self.client_id, "version": __version__, "started_at": self.started_at}
        return orjson.dumps(status if reason is None else {**status, "reason": reason})

    def stats(self, writer: WriterStats, connected: bool, in_hand: int) -> bytes | None:
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
            "wal_checkpoints": writer.checkpoints, "last_stored_at": dict(writer.last_stored_at)})
