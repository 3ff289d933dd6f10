"""The database writer: the only actor that writes, over the process's only write connection.

Batches from the ingest actors pile up while a transaction is running; the next transaction
takes all of them (group commit: it waits up to `commit_interval` for more, at most `max_batch`
rows), and only once it has committed are their MQTT acknowledgements released. A failed commit
is rolled back and retried with backoff; nothing is acknowledged until it is durable.

It also counts failed deliveries for the MQTT link (Strikes, answered with Struck once
committed; see actors/mqtt/inflight.py), deletes what the retention actor has archived (Prune, one small
transaction at a time) and keeps the WAL bounded (a truncating checkpoint once it passes
`checkpoint_mb`).

SQLite's write lock is waited for in short polls, up to `busy_timeout`, so that a stop (the
`stopping` event) is never held up by someone else's lock: what is not committed by then is
delivered again by the broker."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import peewee

from actors.devices import DEVICE_TYPES
from actors.messages import Cleared, Committed, Flush, Prune, StatsRequest, Strikes, Struck, WriteBatch, WriterStats
from actors.models import MODELS, DeliveryFailure, RejectedMessage, insert_fields, insert_sql, is_sqlite, utc_now
from actors.peers import Peers, Supervised
from actors.readgate import ReadGate
from actors.schema import prepare
from actors.settings import DatabaseSettings, describe_url

log = logging.getLogger(__name__)
MAX_RETRY_DELAY = 10.0
STARTUP_LOCK_WAIT = 20.0  # within the supervisor's start timeout
CHECKPOINT_WAIT = 0.25  # longest a checkpoint waits for readers (and so holds up new readings)
CHECKPOINT_RETRY = 5.0  # after a checkpoint that readers kept from finishing
TABLES = {m._meta.table_name: m for m in MODELS}
RETRIABLE = (sqlite3.OperationalError, peewee.OperationalError, peewee.InterfaceError)
LOCK_POLL_MS = 100  # how long one try for SQLite's write lock waits; see _begin
FORGET_FAILURES_AFTER = timedelta(days=30)  # a failed message the broker never delivered again


def _rows(batch: WriteBatch) -> int:
    return len(batch.rows) + len(batch.rejections)


def _locked(exc: Exception) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


class WriterActor(Supervised):
    def __init__(self, database: peewee.Database, settings: DatabaseSettings, peers: Peers,
                 supervisor=None, gate: ReadGate | None = None, stopping: threading.Event | None = None):
        super().__init__("writer", supervisor)
        self.db = database
        self.settings = settings
        self.peers = peers
        self.gate = gate or ReadGate()
        self.stopping = stopping or threading.Event()  # set by the supervisor: give up waiting for locks
        self.sqlite = is_sqlite(database)
        self.where = describe_url(settings.url) if settings.url else settings.path
        self._wal = Path(settings.path + "-wal")
        self._next_checkpoint = 0.0
        self._checkpoint_blocked_since: float | None = None
        self._checkpoint_warned = False
        self._checkpoints = 0
        self._pending: list[WriteBatch] = []
        self._pending_rows = 0
        self._strikes: list[tuple[int, str, str, bool]] = []  # (ack id, fingerprint, topic, fresh only)
        self._cleared: set[str] = set()  # fingerprints whose failures to forget
        self._flush_queued = False
        self._oldest = 0.0  # when the oldest pending batch arrived
        self._retry_timer: threading.Timer | None = None
        self._retry_delay = settings.retry_delay
        self._failing_since: float | None = None
        # for the stats reports
        self._stored: dict[str, int] = {name: 0 for name in DEVICE_TYPES}
        self._last_stored_at: dict[str, str] = {}
        self._rejected = 0
        self._commit_failures = 0
        self._last_commit_ms = 0.0
        self._max_commit_ms = 0.0

    def on_start(self):
        try:
            if self.sqlite:
                self._check_soundness()
            self.db.connect(reuse_if_open=True)
            if self.sqlite:
                self._check_settings()
                self.db.execute_sql(f"PRAGMA busy_timeout = {LOCK_POLL_MS}")  # _begin polls up to busy_timeout
            self._prepare()
            if self.sqlite and self.settings.max_size_mb:
                pages = self.settings.max_size_mb * 1024 * 1024 // self._pragma("page_size")
                self.db.execute_sql(f"PRAGMA max_page_count = {pages}")  # this connection only
        except peewee.DatabaseError as exc:
            raise RuntimeError(f"cannot open the database {self.where}: {exc}") from None
        if not self.sqlite:
            log.info("database %s: PostgreSQL, schema version ok", self.where)
        self._sql = {name: insert_sql(d.model, self.db) for name, d in DEVICE_TYPES.items()}
        self._reject_sql = insert_sql(RejectedMessage, self.db)
        self._fields = {name: insert_fields(d.model) for name, d in DEVICE_TYPES.items()}
        self._fields["rejected"] = insert_fields(RejectedMessage)

    def _prepare(self) -> None:
        """Create the tables, or upgrade an older schema. A current schema is only read; an
        upgrade needs the write lock, and waits for it (logged once) as long as start-up may."""
        deadline = time.monotonic() + STARTUP_LOCK_WAIT
        waiting = False
        while True:
            try:
                return prepare(self.db)
            except peewee.OperationalError as exc:
                if not (self.sqlite and _locked(exc)) or time.monotonic() > deadline or self.stopping.is_set():
                    raise
                if not waiting:
                    log.warning("the schema upgrade waits for the write lock, held by another connection "
                                "(an operator's sqlite3 session?)")
                    waiting = True

    def _pragma(self, name: str):
        return self.db.execute_sql(f"PRAGMA {name}").fetchone()[0]

    def _check_soundness(self) -> None:
        """Before anything touches it (connecting switches the file to WAL): a quick integrity
        check over a read-only connection. A damaged database stops start-up; it is never
        replaced or repaired behind the operator's back."""
        path = self.settings.path
        try:
            con = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
        except sqlite3.OperationalError:
            return  # no database yet: it is created next
        try:
            report = [line for row in con.execute("PRAGMA quick_check(5)") for line in row[0].splitlines()]
        except sqlite3.DatabaseError as exc:
            report = [str(exc)]
        finally:
            con.close()
        if report != ["ok"]:
            raise RuntimeError(f"the database {path} is damaged ({'; '.join(report)}). It has been left "
                               "as it is: restore a backup, or repair it with sqlite3's .recover")

    def _check_settings(self) -> None:
        """The settings durability rests on; e.g. a filesystem without shared memory cannot do WAL."""
        problems = [f"{name} is {value!r}, not {expected!r}" for name, value, expected in (
            ("journal_mode", self._pragma("journal_mode"), "wal"),
            ("synchronous", self._pragma("synchronous"), 2),  # FULL
            ("busy_timeout", self._pragma("busy_timeout"), int(self.settings.busy_timeout * 1000)),
        ) if value != expected]
        if problems:
            raise RuntimeError(f"the database {self.settings.path} cannot be used safely: {'; '.join(problems)}")
        log.info("database %s: WAL, synchronous=FULL, busy timeout %d ms, quick_check ok",
                 self.settings.path, self._pragma("busy_timeout"))

    def on_receive(self, message):
        if isinstance(message, WriteBatch):
            if not self._pending:
                self._oldest = time.monotonic()
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
        elif isinstance(message, Flush):
            self._flush_queued = False
            self._retry_timer = None
            linger = self._oldest + self.settings.commit_interval - time.monotonic()
            if self._pending and linger > 0 and self._pending_rows < self.settings.max_batch:
                # A commit costs about as much as 100 rows: wait a moment for more batches, then
                # queue behind them so that they join this transaction.
                time.sleep(linger)
                self._flush_queued = True
                self.actor_ref.tell(Flush())
                return
            self.commit_pending()
        elif isinstance(message, Prune):
            return self._prune(message)
        elif isinstance(message, StatsRequest):
            self.peers.tell("link", self._stats())
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
        self.db.close()

    def on_failure(self, exception_type, exception_value, traceback):
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self.db.close()  # this thread's connection: its successor opens its own
        super().on_failure(exception_type, exception_value, traceback)

    def commit_pending(self) -> None:
        """Commit everything pending, in transactions of at most max_batch rows (a single
        larger batch goes alone: its acknowledgements are released together; so does a batch
        marked `alone`, so that if it fails, it fails on its own)."""
        while self._pending or self._strikes or self._cleared:
            taken, size = [], 0
            while self._pending and not (taken and (taken[0].alone or self._pending[0].alone)) \
                    and (not taken or size + _rows(self._pending[0]) <= self.settings.max_batch):
                batch = self._pending.pop(0)
                taken.append(batch)
                size += _rows(batch)
            strikes, self._strikes = self._strikes, []
            cleared, self._cleared = self._cleared, set()
            self.suspects = tuple(a for b in taken for a in b.ack_ids)  # if this crashes the writer
            try:
                counts = self._write(taken, strikes, cleared)
            except RETRIABLE as exc:  # locked, full, I/O error, server gone: worth retrying
                self._pending[:0] = taken
                self._strikes[:0] = strikes
                self._cleared |= cleared
                self.suspects = ()
                if not self.sqlite:
                    self.db.close()  # a connection that failed may be broken: the next try takes another
                self._failed(exc)
                return
            self.suspects = ()
            self._pending_rows -= size
            self._recovered()
            if taken or cleared:
                self.peers.tell("link", Committed(tuple(a for b in taken for a in b.ack_ids), tuple(cleared)))
            if counts:
                self.peers.tell("link", Struck(tuple(counts)))
        self._checkpoint_if_due()

    def _stats(self) -> WriterStats:
        wal = self._wal_bytes() if self.sqlite else 0
        stats = WriterStats(tuple(self._stored.items()), self._rejected, self._pending_rows,
                            self._commit_failures, round(self._last_commit_ms, 2),
                            round(self._max_commit_ms, 2), self._database_bytes() + wal,
                            tuple(self._last_stored_at.items()), wal, self._checkpoints)
        self._max_commit_ms = 0.0
        return stats

    def _database_bytes(self) -> int:
        if self.sqlite:
            return Path(self.settings.path).stat().st_size
        try:
            return self.db.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0]
        except RETRIABLE:
            return 0

    def _wal_bytes(self) -> int:
        try:
            return self._wal.stat().st_size
        except FileNotFoundError:
            return 0

    def _checkpoint_if_due(self) -> None:
        """SQLite checkpoints the WAL by itself after commits, but can restart it from the
        beginning only when no reader is using it; the gate makes such a moment."""
        if not self.sqlite or time.monotonic() < self._next_checkpoint \
                or self._wal_bytes() < self.settings.checkpoint_mb * 2**20:
            return
        conn = self.db.connection()
        started = time.monotonic()
        with self.gate.closed(CHECKPOINT_WAIT):
            conn.execute(f"PRAGMA busy_timeout = {int(CHECKPOINT_WAIT * 1000)}")  # outside readers
            try:
                busy, wal_pages, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError as exc:  # e.g. the disk is full
                busy, wal_pages, copied = 1, -1, str(exc)
            finally:
                conn.execute(f"PRAGMA busy_timeout = {LOCK_POLL_MS}")
        if not busy:
            self._checkpoints += 1
            log.debug("WAL checkpointed and truncated in %.0f ms (%d pages)",
                      (time.monotonic() - started) * 1000, wal_pages)
            if self._checkpoint_warned:
                log.warning("the WAL has been checkpointed again")
            self._checkpoint_blocked_since, self._checkpoint_warned = None, False
            return
        self._next_checkpoint = time.monotonic() + CHECKPOINT_RETRY
        log.debug("WAL checkpoint incomplete (%s of %s pages copied); retrying in %g s",
                  copied, wal_pages, CHECKPOINT_RETRY)
        if self._checkpoint_blocked_since is None:
            self._checkpoint_blocked_since = started
        elif started - self._checkpoint_blocked_since > 60 and not self._checkpoint_warned:
            self._checkpoint_warned = True
            log.warning("the WAL is %.0f MiB and has not been checkpointed for %.0f s: a reader outside "
                        "the service (a sqlite3 session with an open transaction?) is holding it",
                        self._wal_bytes() / 2**20, started - self._checkpoint_blocked_since)

    def _prune(self, prune: Prune) -> tuple[int, float]:
        """Delete archived rows in one short transaction: new readings wait at most this long."""
        model = TABLES[prune.table]
        query = model.delete().where(model.id.between(prune.first_id, prune.last_id))
        if not self.sqlite:
            started = time.perf_counter()
            with self.db.atomic():
                deleted = query.execute()
            return deleted, (time.perf_counter() - started) * 1000
        sql, params = self.db.get_sql_context().sql(query).query()
        conn = self.db.connection()
        started = time.perf_counter()
        try:
            self._begin(conn)
            deleted = conn.execute(sql, params).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return deleted, (time.perf_counter() - started) * 1000

    def _write(self, batches: list[WriteBatch], strikes=(), cleared=()) -> list[tuple[int, int, bool]]:
        """One transaction: the batches' rows and rejections, the failed deliveries to count
        (their new counts are returned) and those to forget."""
        started = time.perf_counter()
        created_at = utc_now()
        by_device: dict[str, list[tuple]] = {}
        rejections = []
        for batch in batches:
            if batch.rows:  # a batch of rejections only has no rows for its table
                by_device.setdefault(batch.device, []).extend(row + (created_at,) for row in batch.rows)
            rejections.extend((r.topic, r.payload, r.reason, r.received_at) for r in batch.rejections)
        failures = Failures(self.db, strikes, cleared, created_at)
        if self.sqlite:
            inserted, counts = self._write_sqlite(by_device, rejections, failures)
        else:
            inserted, counts = self._write_server(by_device, rejections, failures)
        for device, n in inserted.items():
            self._stored[device] += n
            self._last_stored_at[device] = created_at
        self._rejected += len(rejections)
        self._last_commit_ms = (time.perf_counter() - started) * 1000
        self._max_commit_ms = max(self._max_commit_ms, self._last_commit_ms)
        return counts

    def _write_server(self, by_device: dict[str, list[tuple]], rejections: list[tuple], failures: Failures):
        """PostgreSQL: one transaction, a multi-row INSERT ... ON CONFLICT DO NOTHING per table."""
        self.db.connect(reuse_if_open=True)
        with self.db.atomic():
            inserted = {device: DEVICE_TYPES[device].model.insert_many(rows, fields=self._fields[device])
                        .on_conflict_ignore().as_rowcount().execute() for device, rows in by_device.items()}
            if rejections:
                RejectedMessage.insert_many(rejections, fields=self._fields["rejected"]).execute()
            counts = failures.apply(lambda sql, params: self.db.execute_sql(sql, params))
        return inserted, counts

    def _write_sqlite(self, by_device: dict[str, list[tuple]], rejections: list[tuple], failures: Failures):
        # The raw connection, not db.atomic(): after SQLITE_FULL, SQLite has already rolled the
        # transaction back, and peewee's own rollback would fail and hide the real error.
        conn = self.db.connection()
        try:
            self._begin(conn)  # the write lock up front: no SQLITE_BUSY halfway
            inserted = {device: conn.executemany(self._sql[device], rows).rowcount
                        for device, rows in by_device.items()}  # redeliveries are not counted
            if rejections:
                conn.executemany(self._reject_sql, rejections)
            counts = failures.apply(conn.execute)
            conn.execute("COMMIT")
        except BaseException:  # a bug as much as a full disk: never leave the write lock held
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return inserted, counts

    def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting up to busy_timeout for the write lock in LOCK_POLL_MS tries:
        a stop gives up at once rather than wait out someone else's lock."""
        deadline = time.monotonic() + self.settings.busy_timeout
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not _locked(exc) or self.stopping.is_set() or time.monotonic() >= deadline:
                    raise

    def _failed(self, exc: Exception) -> None:
        self._commit_failures += 1
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("cannot commit to the database (%s); nothing is acknowledged until it "
                      "succeeds; retrying", exc)
        else:
            log.debug("commit still failing: %s", exc)
        self._retry_timer = self.tell_later(self._retry_delay, Flush())
        self._retry_delay = min(self._retry_delay * 2, MAX_RETRY_DELAY)

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.warning("database writes resumed after %.1f s", time.monotonic() - self._failing_since)
            self._failing_since = None
        self._retry_delay = self.settings.retry_delay


class Failures:
    """The failed-delivery counts of one transaction (see actors/mqtt/inflight.py): count one more failure
    for each strike, returning the new counts; forget the cleared ones, and any the broker has
    not delivered again for a month."""
    TABLE = DeliveryFailure._meta.table_name

    def __init__(self, db: peewee.Database, strikes, cleared, now: str):
        self.strikes, self.cleared, self.now = strikes, sorted(cleared), now
        p = db.param
        insert = f"INSERT INTO {self.TABLE} (fingerprint, topic, failures, last_failed_at) VALUES ({p}, {p}, 1, {p})"
        self.count_sql = (f"{insert} ON CONFLICT (fingerprint) DO UPDATE SET failures = {self.TABLE}.failures + 1, "
                          "last_failed_at = excluded.last_failed_at RETURNING failures")
        self.fresh_sql = f"{insert} ON CONFLICT (fingerprint) DO NOTHING"
        self.read_sql = f"SELECT failures FROM {self.TABLE} WHERE fingerprint = {p}"
        self.forget_sql = f"DELETE FROM {self.TABLE} WHERE fingerprint = {p}"
        self.expire_sql = f"DELETE FROM {self.TABLE} WHERE last_failed_at < {p}"

    def apply(self, execute) -> list[tuple[int, int, bool]]:
        for fp in self.cleared:
            execute(self.forget_sql, (fp,))
        if not self.strikes:
            return []
        month_ago = (datetime.now(timezone.utc) - FORGET_FAILURES_AFTER).strftime("%Y-%m-%d %H:%M:%S")
        execute(self.expire_sql, (month_ago,))
        counts = []
        for ack_id, fp, topic, fresh_only in self.strikes:
            if not fresh_only:
                counts.append((ack_id, execute(self.count_sql, (fp, topic, self.now)).fetchone()[0], True))
            elif execute(self.fresh_sql, (fp, topic, self.now)).rowcount == 1:
                counts.append((ack_id, 1, True))
            else:
                counts.append((ack_id, execute(self.read_sql, (fp,)).fetchone()[0], False))
        return counts
