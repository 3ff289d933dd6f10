"""The database writer: the only actor that writes, over the process's only write connection.

Batches from the ingest actors pile up while a transaction is running; the next transaction
takes all of them (group commit, at most `max_batch` rows), and only once it has committed are
their MQTT acknowledgements released. (When readings are sparse, the MQTT link lets them gather
for up to `commit_linger` before it hands them on: actors/mqtt/handover.py.) A failed commit
is rolled back and retried with backoff; nothing is acknowledged until it is durable.

It also counts failed deliveries for the MQTT link (Strikes, answered with Struck once
committed; see actors/mqtt/limit.py), keeps devices' stale state (MarkStale: its announcement
is published only once stored), deletes what the retention actor has archived (Prune, one small
transaction at a time) and keeps the WAL bounded (checkpoint.py). The database work itself is the
store's (store.py: SQLite or PostgreSQL); a stop never waits out someone else's lock, and what is
not committed by then is delivered again by the broker."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import peewee

from actors.devices import BUILTIN_TYPES, DeviceTypes
from actors.protocol.messages import (
    Availability,
    Cleared,
    Committed,
    Flush,
    MarkStale,
    Prune,
    Pruned,
    Seen,
    StatsRequest,
    Strikes,
    Struck,
    WriteBatch,
    WriterStats,
    fingerprint,
    reason_class,
)
from actors.protocol.sitetime import UNZONED, SiteTime
from actors.runtime.counting import Histogram, TopCounts
from actors.runtime.peers import AVAILABILITY, LINK, Peers
from actors.runtime.settings import DatabaseSettings
from actors.runtime.supervised import Supervised
from actors.storage.checkpoint import WalCheckpoint
from actors.storage.dberrors import Episode, StoreUnavailable
from actors.storage.models import utc_now
from actors.storage.readgate import ReadGate
from actors.storage.store import Failures, SqliteStore, Store, open_store

log = logging.getLogger(__name__)
MAX_RETRY_DELAY = 10.0
WRONG_CLOCKS_KEPT, WRONG_CLOCKS_REPORTED = 100, 20  # devices counted; listed in the stats (the worst)


def _rows(batch: WriteBatch) -> int:
    return len(batch.rows) + len(batch.rejections)


class WriterActor(Supervised):
    def __init__(self, name: str, database: peewee.Database, settings: DatabaseSettings, peers: Peers,
                 supervisor=None, gate: ReadGate | None = None, stopping: threading.Event | None = None,
                 marks=None, check: bool = True, site: SiteTime = UNZONED, types: DeviceTypes = BUILTIN_TYPES):
        """`check`: run quick_check on the file first (at the process's start; a restarted writer
        skips it: it can take minutes on a big database, while nothing feeds the watchdog);
        `site`: the calendar of the summaries' hours."""
        super().__init__(name, supervisor, marks)
        self.check = check
        self.site = site
        self.types = types
        self.db = database
        self.settings = settings
        self.peers = peers
        self.gate = gate or ReadGate()
        self.stopping = stopping or threading.Event()  # set by the supervisor: give up waiting for locks
        self.store: Store | None = None
        self.checkpoint: WalCheckpoint | None = None
        self._pending: list[WriteBatch] = []
        self._pending_rows = 0
        self._strikes: list[tuple[int, str, str, bool]] = []  # (ack id, fingerprint, topic, fresh only)
        self._cleared: set[str] = set()  # fingerprints whose failures to forget
        self._stale: list[tuple] = []  # devices whose stale state to keep (MarkStale)
        self._announce: list[Availability] = []  # ... and to publish once kept
        self._flush_queued = False
        self._retry_timer: threading.Timer | None = None
        self._episode = Episode(log, "cannot commit to the database (%s); nothing is acknowledged until it "
                                     "succeeds; retrying", "database writes resumed after %.1f s",
                                settings.retry_delay, MAX_RETRY_DELAY)
        # for the stats reports
        self._stored: dict[str, int] = {name: 0 for name in types}
        self._last_stored_at: dict[str, str] = {}
        self._rejected = 0
        self._rejected_by: Counter[tuple[str, str]] = Counter()  # (type, reason class): a few dozen at most
        self._commit_seconds = Histogram()
        # clock rejections: the worst devices (bounded, whatever the fleet) and totals by type
        self._wrong_clocks = TopCounts(WRONG_CLOCKS_KEPT)
        self._wrong_clock_totals: dict[str, int] = {name: 0 for name in types}
        self._commit_failures = 0
        self._last_commit_ms = 0.0
        self._max_commit_ms = 0.0

    @property
    def commit_failures(self) -> int:
        """Transactions that failed so far (the stats' commit_failures): a state tests wait on."""
        return self._commit_failures

    def on_start(self):
        self.store = open_store(self.db, self.settings, self.stopping, self.check, self.site, self.types)
        if isinstance(self.store, SqliteStore):
            self.checkpoint = WalCheckpoint(self.store, self.gate)

    def on_receive(self, message):
        if isinstance(message, WriteBatch):
            self._pending.append(message)
            self._pending_rows += _rows(message)
            if self._retry_timer is not None:
                return  # the database is failing; the retry timer decides when to try again
            if self._pending_rows >= self.settings.max_batch:
                self.commit_pending()
            else:
                self._queue_flush()
        elif isinstance(message, Strikes):
            self._strikes.extend(message.entries)
            if self._retry_timer is None:
                self._queue_flush()
        elif isinstance(message, Cleared):
            self._cleared.update(message.fingerprints)
            if self._retry_timer is None:
                self._queue_flush()
        elif isinstance(message, MarkStale):
            self._stale.extend(message.devices)
            if message.announce is not None:
                self._announce.append(message.announce)
            if self._retry_timer is None:
                self._queue_flush()
        elif isinstance(message, Flush):
            self._flush_queued = False
            self._retry_timer = None
            self.commit_pending()
        elif isinstance(message, Prune):
            return self._prune(message)
        elif isinstance(message, StatsRequest):
            self.peers.tell(LINK, self._stats())
        else:
            log.warning("writer ignored an unexpected message: %r", message)

    def _queue_flush(self) -> None:
        if not self._flush_queued:
            self._flush_queued = True
            self.actor_ref.tell(Flush())

    def on_stop(self):
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self.commit_pending()  # one last try, without waiting for a lock; the broker redelivers the rest
        self.store.close()

    def on_failure(self, exception_type, exception_value, traceback):
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self.store is not None:
            self.store.close()  # this thread's connection: its successor opens its own
        super().on_failure(exception_type, exception_value, traceback)

    def commit_pending(self) -> None:
        """Commit everything pending, in transactions of at most max_batch rows (a single
        larger batch goes alone: its acknowledgements are released together; so does a batch
        marked `alone`, so that if it fails, it fails on its own)."""
        while self._pending or self._strikes or self._cleared or self._stale:
            taken, size = [], 0
            while self._pending and not (taken and (taken[0].alone or self._pending[0].alone)) \
                    and (not taken or size + _rows(self._pending[0]) <= self.settings.max_batch):
                batch = self._pending.pop(0)
                taken.append(batch)
                size += _rows(batch)
            strikes, self._strikes = self._strikes, []
            cleared, self._cleared = self._cleared, set()
            stale, self._stale = self._stale, []
            announce, self._announce = self._announce, []
            self.handling(tuple(a for b in taken for a in b.ack_ids))  # if this crashes the writer
            try:
                counts = self._write(taken, strikes, cleared.union(*(b.forget for b in taken)), stale)
            except StoreUnavailable as exc:  # locked, full, read-only, I/O error, server gone: worth retrying
                self._pending[:0] = taken
                self._strikes[:0] = strikes
                self._cleared |= cleared
                self._stale[:0] = stale
                self._announce[:0] = announce
                self.handled()
                self.store.failed()
                self._failed(exc)
                return
            self.handled()
            self._pending_rows -= size
            self._episode.succeeded()
            if taken or cleared:
                self.peers.tell(LINK, Committed(tuple(a for b in taken for a in b.ack_ids), tuple(cleared)))
            if counts:
                self.peers.tell(LINK, Struck(tuple(counts)))
            for announcement in announce:
                self.peers.tell(LINK, announcement)
        if self.checkpoint is not None:
            self.checkpoint.if_due()

    def _stats(self) -> WriterStats:
        database_bytes, wal_bytes = self.store.sizes()
        stats = WriterStats(
            stored=tuple(self._stored.items()), rejected=self._rejected, backlog=self._pending_rows,
            commit_failures=self._commit_failures, last_commit_ms=round(self._last_commit_ms, 2),
            max_commit_ms=round(self._max_commit_ms, 2), database_bytes=database_bytes,
            last_stored_at=tuple(self._last_stored_at.items()), wal_bytes=wal_bytes,
            checkpoints=self.checkpoint.done if self.checkpoint else 0,
            wrong_clocks=tuple((*key, n) for key, n in self._wrong_clocks.top(WRONG_CLOCKS_REPORTED)),
            wrong_clock_totals=tuple((k, n) for k, n in self._wrong_clock_totals.items() if n),
            rejected_by=tuple((*key, n) for key, n in sorted(self._rejected_by.items())),
            commit_seconds=self._commit_seconds.snapshot(), commits=sum(self._commit_seconds.counts),
            last_checkpoint_at=self.checkpoint.last_at if self.checkpoint else None)
        self._max_commit_ms = 0.0
        return stats

    def _prune(self, prune: Prune) -> Pruned:
        """Delete archived rows in one short transaction: new readings wait at most this long."""
        started = time.perf_counter()
        deleted = self.store.delete(prune.table, prune.first_id, prune.last_id)
        return Pruned(deleted, (time.perf_counter() - started) * 1000)

    def _write(self, batches: list[WriteBatch], strikes=(), cleared=(), stale=()) -> list[tuple[int, int, bool]]:
        """One transaction: the batches' rows and rejections, the failed deliveries to count
        (their new counts are returned) and those to forget, and the devices gone stale."""
        started = time.perf_counter()
        created_at = utc_now()
        by_device: dict[str, list[tuple]] = {}
        wrong_clocks: dict[str, list[str]] = {}
        rejections = []
        for batch in batches:
            if batch.rows:  # a batch of rejections only has no rows for its table
                by_device.setdefault(batch.device, []).extend(row + (created_at,) for row in batch.rows)
            if batch.wrong_clocks:
                wrong_clocks.setdefault(batch.device, []).extend(batch.wrong_clocks)
            rejections.extend((r.topic, r.payload, r.reason, r.received_at, fingerprint(r).hex(), r.again)
                              for r in batch.rejections)
        # The mark is cleared once the statements have run: a death during the commit (its fsync,
        # where a kill from outside usually lands) is not these rows' fault.
        inserted, rejected, seen, counts = self.store.write(by_device, rejections,
                                                  Failures(self.db, strikes, cleared, created_at), wrong_clocks,
                                                  created_at, self.mark.clear, stale)
        for device, n in inserted.items():
            self._stored[device] += n
            self._last_stored_at[device] = created_at
        for device, ids in wrong_clocks.items():
            self._wrong_clock_totals[device] += len(ids)
            for device_id in ids:
                self._wrong_clocks.add((device, device_id))
        self._rejected += len(rejected)
        for topic, reason in rejected:
            by_topic = self.types.by_reading_topic
            self._rejected_by[(by_topic[topic].name if topic in by_topic else "other",
                               reason_class(reason))] += 1
        if self.peers.knows(AVAILABILITY):
            for device, devices in seen.items():
                if devices:
                    self.peers.tell(AVAILABILITY, Seen(device, tuple(devices), created_at))
        took = time.perf_counter() - started
        self._commit_seconds.observe(took)
        self._last_commit_ms = took * 1000
        self._max_commit_ms = max(self._max_commit_ms, self._last_commit_ms)
        return counts

    def _failed(self, exc: Exception) -> None:
        self._commit_failures += 1
        self._retry_timer = self.tell_later(self._episode.failed(exc), Flush())

