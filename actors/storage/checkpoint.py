"""The WAL kept bounded under constant reads. SQLite checkpoints the WAL by itself after commits,
but can restart it from the beginning only when no reader is using it, and a steady stream of
queries may never leave such a moment. So once the WAL passes `database.checkpoint_mb`, the
writer holds our own readers back for a moment (the read gate) and checkpoints with TRUNCATE."""

from __future__ import annotations

import logging
import time

from actors.storage.dberrors import DRIVER_ERRORS
from actors.storage.models import utc_now
from actors.storage.readgate import ReadGate
from actors.storage.store import LOCK_POLL_MS, SqliteStore

log = logging.getLogger("actors.writer")
CHECKPOINT_WAIT = 0.25  # longest a checkpoint waits for readers (and so holds up new readings)
CHECKPOINT_RETRY = 5.0  # after a checkpoint that readers kept from finishing


class WalCheckpoint:
    def __init__(self, store: SqliteStore, gate: ReadGate):
        self.store = store
        self.gate = gate
        self.limit = store.settings.checkpoint_mb * 2**20
        self.done = 0  # truncating checkpoints so far (for the stats) ...
        self.last_at: str | None = None  # ... and when the latest was (UTC)
        self._next = 0.0
        self._blocked_since: float | None = None
        self._warned = False

    def if_due(self) -> None:
        if time.monotonic() < self._next or self.store.wal_bytes() < self.limit:
            return
        conn = self.store.connection
        started = time.monotonic()
        with self.gate.closed(CHECKPOINT_WAIT):
            conn.execute(f"PRAGMA busy_timeout = {int(CHECKPOINT_WAIT * 1000)}")  # outside readers
            try:
                busy, wal_pages, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except DRIVER_ERRORS as exc:  # e.g. the disk is full (dberrors.py: what is worth waiting out)
                busy, wal_pages, copied = 1, -1, str(exc)
            finally:
                conn.execute(f"PRAGMA busy_timeout = {LOCK_POLL_MS}")
        if not busy:
            self.done += 1
            self.last_at = utc_now()
            log.debug("WAL checkpointed and truncated in %.0f ms (%d pages)", (time.monotonic() - started) * 1000,
                      wal_pages)
            if self._warned:
                log.warning("the WAL has been checkpointed again")
            self._blocked_since, self._warned = None, False
            return
        self._next = time.monotonic() + CHECKPOINT_RETRY
        log.debug("WAL checkpoint incomplete (%s of %s pages copied); retrying in %g s", copied, wal_pages,
                  CHECKPOINT_RETRY)
        if self._blocked_since is None:
            self._blocked_since = started
        elif started - self._blocked_since > 60 and not self._warned:
            self._warned = True
            log.warning("the WAL is %.0f MiB and has not been checkpointed for %.0f s: a reader outside "
                        "the service (a sqlite3 session with an open transaction?) is holding it",
                        self.store.wal_bytes() / 2**20, started - self._blocked_since)
