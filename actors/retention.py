"""Retention: rows older than their table's `*_days` setting are archived, then deleted (the hourly
rollups behind summaries by `summary_days`, so that summaries outlive the raw rows).

Once a day (and at start-up) this actor reads each expired day of a table over its own read
connection and writes it to one gzip-compressed CSV file (header row; ids kept), made durable
before anything is deleted. The deletes themselves go to the writer, the only actor that writes,
as small id ranges (Prune) asked one at a time, so new readings wait at most for one of them."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import gzip
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import peewee
import pykka
from peewee import fn

from actors.devices import BUILTIN_TYPES, DeviceTypes
from actors.protocol.messages import Prune
from actors.runtime.peers import WRITER, Peers
from actors.runtime.settings import RetentionSettings
from actors.runtime.supervised import Supervised
from actors.storage.dberrors import DRIVER_ERRORS, Episode, StoreUnavailable, translated
from actors.storage.models import RejectedMessage, is_sqlite, utc_now
from actors.storage.readgate import ReadGate

log = logging.getLogger(__name__)
PRUNE_TIMEOUT = 120.0  # a delete waits behind the writer's queue, and a locked database retries
FIRST_RETRY, RETRY_AFTER_FAILURE = 5.0, 600.0  # a pass that failed is tried again after 5 s, doubling up to 10 min
READ_ROWS = 10_000
RETENTION_LOCK = 0x6D717475  # the PostgreSQL advisory lock of a pass


@dataclass(frozen=True)
class ExpiringTable:
    model: type[peewee.Model]
    days: int
    day: peewee.Node  # the row's date, YYYY-MM-DD
    kept: Callable[[str], set[int]]  # ids dated before the cutoff that must stay

    @property
    def name(self) -> str:
        return self.model._meta.table_name


def expiring_tables(settings: RetentionSettings, types: DeviceTypes) -> list[ExpiringTable]:
    tables = [ExpiringTable(d.model, settings.days(d.name), d.model.date, d.kept_past_retention)
              for d in types.values()]
    tables.append(ExpiringTable(RejectedMessage, settings.rejected_days,
                                fn.SUBSTR(RejectedMessage.received_at, 1, 10), lambda cutoff: set()))
    # the hourly rollups behind summaries outlive the readings (retention.summary_days; 0: for ever)
    tables += [ExpiringTable(m, settings.summary_days, fn.SUBSTR(m.hour, 1, 10), lambda cutoff: set())
               for m in types.rollup_models()]
    return [t for t in tables if t.days > 0]


@dataclass(frozen=True, slots=True)
class RetentionNow:
    """A timer -> the retention actor: time for a pass."""


class RetentionActor(Supervised):
    def __init__(self, name: str, database: peewee.Database, settings: RetentionSettings, peers: Peers,
                 supervisor=None, gate: ReadGate | None = None, housekept: dict[str, str] | None = None,
                 types: DeviceTypes = BUILTIN_TYPES):
        """`housekept`: where the time of the latest pass is kept for the stats (StatusReport)."""
        super().__init__(name, supervisor)
        self.db = database
        self.settings = settings
        self.peers = peers
        self.housekept = {} if housekept is None else housekept
        self.gate = gate or ReadGate()
        self.tables = expiring_tables(settings, types)
        self._timer: threading.Timer | None = None
        self._episode = Episode(log, "retention pass stopped: %s; trying again with backoff (what was archived "
                                     "and not yet deleted is archived again then, without duplicates)",
                                "retention: a pass completed after %.0f s of retrying", FIRST_RETRY,
                                RETRY_AFTER_FAILURE)

    def on_start(self):
        """The first pass comes from the supervisor once this actor is registered (ChildSpec.then)."""
        if self.tables:
            log.info("retention: %s; archive in %s", ", ".join(f"{t.name} {t.days} days" for t in self.tables),
                     Path(self.settings.archive_dir).resolve())

    def on_stop(self):
        if self._timer is not None:
            self._timer.cancel()
        self.db.close()

    def on_failure(self, exception_type, exception_value, traceback):
        self.on_stop()
        super().on_failure(exception_type, exception_value, traceback)

    def on_receive(self, message):
        if not isinstance(message, RetentionNow):
            log.warning("retention actor ignored an unexpected message: %r", message)
            return
        if not self.tables:
            return  # keep everything: nothing to do, ever
        delay = self.settings.interval_hours * 3600
        try:
            self.run_pass(datetime.now(timezone.utc).date())
        except (StoreUnavailable, OSError, pykka.ActorDeadError, pykka.Timeout) as exc:
            # a locked, full or read-only database, a full archive disk, a writer that is restarting
            delay = min(delay, self._episode.failed(exc or type(exc).__name__))
            with contextlib.suppress(*DRIVER_ERRORS):
                self.db.close()  # a broken connection is not used again: the next pass makes its own
        else:
            self._episode.succeeded()
            self.housekept["retention"] = utc_now()
        self._timer = self.tell_later(delay, RetentionNow())

    def run_pass(self, today: date) -> None:
        with translated():  # the writer's answers (Prune) are translated where it deletes
            self._connect()
            self._run_pass(today)

    def _connect(self) -> None:
        """This thread's own connection, which only reads (the writer deletes); made when a pass
        needs it, so that a database that cannot be reached just now never stops the actor's start."""
        if self.db.is_closed():
            self.db.connect()
            if is_sqlite(self.db):
                self.db.execute_sql("PRAGMA query_only = 1")

    def _run_pass(self, today: date) -> None:
        with exclusive_pass(self.db) as ours:
            if not ours:
                log.info("retention: another instance of the service is running a pass on this database; "
                         "this one is skipped")
                return
            self._expire_all(today)

    def _expire_all(self, today: date) -> None:
        for table in self.tables:
            started = time.monotonic()
            cutoff = (today - timedelta(days=table.days)).isoformat()
            days, rows, longest = self.expire(table, cutoff)
            if days:
                log.info("retention: %s: %d rows of %d days before %s archived and deleted in %.1f s "
                         "(longest delete %.0f ms)", table.name, rows, len(days), cutoff,
                         time.monotonic() - started, longest)

    def expire(self, table: ExpiringTable, cutoff: str) -> tuple[list[str], int, float]:
        """Archive then delete every row of `table` dated before `cutoff`; returns the days,
        the number of rows deleted, and the longest delete in ms."""
        m = table.model
        with self.gate.reading():
            # The table's newest row always stays: SQLite gives a new row the largest id + 1, so
            # deleting it would hand its id out again, and an id must name one row for good.
            kept = table.kept(cutoff) | {m.select(fn.MAX(m.id)).scalar()}
            # The ids of a day are nearly contiguous: reading a day by its id range spares a
            # full scan per day (the tables have no index that starts with the date).
            days = list(self.db.execute(m.select(table.day, fn.MIN(m.id), fn.MAX(m.id))
                                        .where(table.day < cutoff).group_by(table.day).order_by(table.day)))
        deleted, longest = 0, 0.0
        for day, first, last in days:
            rows = self._day_rows(table, day, first, last)
            runs = archive_day(self.archive_path(table.name, day), m._meta.sorted_field_names, rows, kept)
            for start, end in runs:
                for low in range(start, end + 1, self.settings.batch_rows):
                    pruned = self.peers.ask(WRITER, Prune(table.name, low, min(end, low + self.settings.batch_rows - 1)),
                                            PRUNE_TIMEOUT)
                    deleted += pruned.deleted
                    longest = max(longest, pruned.ms)
        return [d for d, _, _ in days], deleted, longest

    def _day_rows(self, table: ExpiringTable, day: str, first: int, last: int) -> Iterator[tuple]:
        """The day's rows in id order, read READ_ROWS at a time: each read is short, so a WAL
        checkpoint never waits long for this reader."""
        m = table.model
        after = first - 1
        while True:
            with self.gate.reading():
                chunk = list(self.db.execute(m.select().where(m.id.between(after + 1, last) & (table.day == day))
                                             .order_by(m.id).limit(READ_ROWS).tuples()))
            yield from chunk
            if len(chunk) < READ_ROWS:
                return
            after = chunk[-1][0]

    def archive_path(self, table: str, day: str) -> Path:
        return Path(self.settings.archive_dir).resolve() / table / day[:4] / f"{table}-{day}.csv.gz"


@contextmanager
def exclusive_pass(db: peewee.Database) -> Iterator[bool]:
    """Whether this instance may run a pass now: several instances on one database (one SQLite
    file, or one PostgreSQL server from several machines) must not archive the same days at
    once. Held for the pass: a lock on a file beside the SQLite database, or a PostgreSQL
    session advisory lock (released by the server, too, if this instance dies)."""
    if is_sqlite(db):
        with open(f"{db.database}-retention.lock", "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True  # closing the file releases it
        return
    if not db.execute_sql("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK,)).fetchone()[0]:
        yield False
        return
    try:
        yield True
    finally:
        try:
            db.execute_sql("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK,))
        except peewee.DatabaseError:
            pass  # the connection broke: the server has released the lock with it


def archive_day(path: Path, columns: Iterable[str], rows: Iterable[tuple], kept: set[int]) -> list[tuple[int, int]]:
    """Write `rows` (id first, in id order; minus the `kept` ids) into the day's archive, merged
    with what an earlier pass archived there (a row is never written twice), durably. Returns
    the archived ids as runs of consecutive ids (first, last): what may now be deleted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    runs: list[list[int]] = []
    with gzip.open(partial, "wt", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        archived = set()
        if path.exists():  # rows of this day that arrived after it was archived, or a pass cut short
            with gzip.open(path, "rt", newline="", encoding="utf-8") as old:
                reader = csv.reader(old)
                next(reader, None)
                for row in reader:
                    archived.add(int(row[0]))
                    writer.writerow(row)
        for row in rows:
            row_id = row[0]
            if row_id in kept:
                continue
            if row_id not in archived:
                writer.writerow([_csv_value(v) for v in row])
            if runs and runs[-1][1] == row_id - 1:
                runs[-1][1] = row_id
            else:
                runs.append([row_id, row_id])
    if not runs:  # only kept rows: the archive stays as it was
        partial.unlink()
        return []
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
    return [(first, last) for first, last in runs]


def _csv_value(value):
    if isinstance(value, (bytes, memoryview)):  # a rejected payload: as text, undecodable bytes as \xNN
        return bytes(value).decode("utf-8", "backslashreplace")
    return value
