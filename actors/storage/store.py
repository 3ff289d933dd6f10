"""The database behind the writer: one interface, with a SQLite and a PostgreSQL implementation, so
that the two differ in this one place. A store opens and checks its database, commits one
transaction of rows, rejections and delivery counts, deletes a range of archived rows, and tells
its size. Only the writer's thread uses it.

SQLite's write lock is waited for in short polls, up to `busy_timeout`, so that a stop (the
`stopping` event) is never held up by someone else's lock."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import peewee

from actors.devices import BUILTIN_TYPES, DeviceTypes
from actors.protocol.sitetime import UNZONED, SiteTime
from actors.runtime.settings import DatabaseSettings, describe_url
from actors.storage.dberrors import DRIVER_ERRORS, locked, translated
from actors.storage.models import DeliveryFailure, RejectedMessage, all_models, insert_fields, insert_sql, is_sqlite
from actors.storage.rollups import ServerCursor, Upkeep
from actors.storage.schema import prepare

log = logging.getLogger("actors.writer")  # operators know these lines as the writer's
LOCK_POLL_MS = 100  # how long one try for SQLite's write lock waits; see SqliteStore.begin
STARTUP_LOCK_WAIT = 20.0  # within the supervisor's start timeout
FORGET_FAILURES_AFTER = timedelta(days=30)  # a failed message the broker never delivered again


def quick_check(path: str | Path) -> list[str] | None:
    """SQLite's quick_check of the file at `path` over a read-only connection (before anything
    switches it to WAL): ["ok"] when sound, the problems otherwise, None if there is no file."""
    try:
        con = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.OperationalError:
        return None
    try:
        return [line for row in con.execute("PRAGMA quick_check(5)") for line in row[0].splitlines()]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    finally:
        con.close()


def open_store(db: peewee.Database, settings: DatabaseSettings, stopping: threading.Event,
               check: bool = True, site: SiteTime = UNZONED, types: DeviceTypes = BUILTIN_TYPES) -> Store:
    """The store for `db`, opened (`check`: SQLite's quick_check first; `site`: the calendar of the
    summaries' hours): RuntimeError with the reason if it cannot be used."""
    store = (SqliteStore if is_sqlite(db) else ServerStore)(db, settings, stopping, site, types)
    try:
        store.open(check)
    except peewee.DatabaseError as exc:
        raise RuntimeError(f"cannot open the database {store.where}: {exc}") from None
    return store


class Store:
    def __init__(self, db: peewee.Database, settings: DatabaseSettings, stopping: threading.Event,
                 site: SiteTime = UNZONED, types: DeviceTypes = BUILTIN_TYPES):
        self.db = db
        self.site = site
        self.types = types
        self.tables = {m._meta.table_name: m for m in all_models(types)}
        self.settings = settings
        self.stopping = stopping
        self.where = describe_url(settings.url) if settings.url else settings.path
        self.fields = {name: insert_fields(d.model) for name, d in types.items()}
        self.fields["rejected"] = insert_fields(RejectedMessage)
        p, table = db.param, RejectedMessage._meta.table_name
        columns = ", ".join(f.column_name for f in self.fields["rejected"])
        # a message delivered again is kept only if it is not kept already (its fingerprint)
        self._reject_once = (f"INSERT INTO {table} ({columns}) SELECT {', '.join([p] * len(self.fields['rejected']))} "
                             f"WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE fingerprint = {p})")

    def _rejections(self, execute, rejections: list[tuple]) -> list[tuple[str, str]]:
        """Keep the rejections (topic, payload, reason, received_at, fingerprint, again); (topic,
        reason) of those that were new. `execute(sql, params)` returns a cursor."""
        kept, topic = [], RejectedMessage.topic.db_value  # bytes in PostgreSQL (TopicField)
        for name, *row, again in rejections:
            row = (topic(name), *row)
            if execute(self._reject_once if again else self._reject, (*row, row[-1]) if again else row).rowcount:
                kept.append((name, row[2]))
        return kept

    def open(self, check: bool = True) -> None:
        raise NotImplementedError

    def write(self, by_device: dict[str, list[tuple]], rejections: list[tuple], failures, wrong_clocks=None,
              stored_at: str = "", ran=lambda: None, stale=()) -> tuple[dict, list, dict, list]:
        """One transaction: rows per device type, rejections, and the delivery counts (`failures`,
        see Failures), with the catalogue and rollups they change (rollups.py; `wrong_clocks`: device
        ids of clock rejections per type; `stale`: see MarkStale); `ran` is called once the statements have run, before the
        commit. The rows inserted per type (redeliveries are not), (topic, reason) of the rejections
        kept (one delivered again and kept already is not), what the catalogue saw per type (Upkeep.stored), and the counts. Like every method here, StoreUnavailable (dberrors.py) when
        the database cannot be written just now."""
        raise NotImplementedError

    def delete(self, table: str, first_id: int, last_id: int) -> int:
        """Delete rows first_id..last_id of `table` in one short transaction; how many."""
        raise NotImplementedError

    def sizes(self) -> tuple[int, int]:
        """(bytes of the database with its WAL, bytes of the WAL alone)."""
        raise NotImplementedError

    def failed(self) -> None:
        """A transaction failed with a retriable error."""

    def close(self) -> None:
        self.db.close()  # this thread's connection: a successor opens its own

    def _prepare(self) -> None:
        """Create the tables, or upgrade an older schema. A current schema is only read; an
        upgrade needs the write lock, and waits for it (logged once) as long as start-up may."""
        deadline = time.monotonic() + STARTUP_LOCK_WAIT
        waiting = False
        while True:
            try:
                return prepare(self.db, self.types)
            except peewee.OperationalError as exc:
                if not (is_sqlite(self.db) and locked(exc)) or time.monotonic() > deadline or self.stopping.is_set():
                    raise
                if not waiting:
                    log.warning("the schema upgrade waits for the write lock, held by another connection "
                                "(an operator's sqlite3 session?)")
                    waiting = True


class SqliteStore(Store):
    def open(self, check: bool = True) -> None:
        # Before anything touches it (connecting switches the file to WAL). A damaged database stops
        # start-up; it is never replaced or repaired behind the operator's back.
        report = quick_check(self.settings.path) if check else None
        if report is not None and report != ["ok"]:
            raise RuntimeError(f"the database {self.settings.path} is damaged ({'; '.join(report)}). It has been "
                               "left as it is: restore a backup, or repair it with sqlite3's .recover")
        self.db.connect(reuse_if_open=True)
        self._check_settings(check)
        self.db.execute_sql(f"PRAGMA busy_timeout = {LOCK_POLL_MS}")  # begin() polls up to busy_timeout
        self._prepare()
        if self.settings.max_size_mb:
            pages = self.settings.max_size_mb * 1024 * 1024 // self._pragma("page_size")
            self.db.execute_sql(f"PRAGMA max_page_count = {pages}")  # this connection only
        self._inserting = {}
        for name, d in self.types.items():
            table, columns = d.model._meta.table_name, ", ".join(f.column_name for f in self.fields[name])
            self._inserting[name] = (f"SELECT MAX(id) FROM {table}", insert_sql(d.model, self.db),
                                     f"SELECT {columns} FROM {table} WHERE id > ? ORDER BY id")
        self._reject = insert_sql(RejectedMessage, self.db)  # a rejection is never a conflict: always a row
        self.upkeep = Upkeep(self.db, self.site, self.types)
        self._wal = Path(self.settings.path + "-wal")

    def _pragma(self, name: str):
        return self.db.execute_sql(f"PRAGMA {name}").fetchone()[0]

    def _check_settings(self, check: bool) -> None:
        """The settings durability rests on; e.g. a filesystem without shared memory cannot do WAL."""
        problems = [f"{name} is {value!r}, not {expected!r}" for name, value, expected in (
            ("journal_mode", self._pragma("journal_mode"), "wal"),
            ("synchronous", self._pragma("synchronous"), 2),  # FULL
            ("busy_timeout", self._pragma("busy_timeout"), int(self.settings.busy_timeout * 1000)),
        ) if value != expected]
        if problems:
            raise RuntimeError(f"the database {self.settings.path} cannot be used safely: {'; '.join(problems)}")
        log.info("database %s: WAL, synchronous=FULL, busy timeout %d ms%s", self.settings.path,
                 self._pragma("busy_timeout"), ", quick_check ok" if check else "")

    @property
    def connection(self) -> sqlite3.Connection:
        return self.db.connection()

    def begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE (the write lock up front: no SQLITE_BUSY halfway), waiting up to
        busy_timeout in LOCK_POLL_MS tries: a stop gives up at once rather than wait out someone
        else's lock."""
        deadline = time.monotonic() + self.settings.busy_timeout
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not locked(exc) or self.stopping.is_set() or time.monotonic() >= deadline:
                    raise

    def _transaction(self, work):
        # The raw connection, not db.atomic(): after SQLITE_FULL, SQLite has already rolled the
        # transaction back, and peewee's own rollback would fail and hide the real error.
        conn = self.connection
        with translated():
            try:
                self.begin(conn)
                result = work(conn)
                conn.execute("COMMIT")
                return result
            except BaseException:  # a bug as much as a full disk: never leave the write lock held
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def write(self, by_device, rejections, failures, wrong_clocks=None, stored_at="", ran=lambda: None, stale=()):
        def work(conn):
            inserted = {device: self._new_rows(conn, device, rows) for device, rows in by_device.items()}
            rejected = self._rejections(conn.execute, rejections)
            seen = self.upkeep.stored(conn, inserted, wrong_clocks or {}, stored_at, stale)
            counts = failures.apply(conn.execute)
            ran()
            return {device: len(rows) for device, rows in inserted.items()}, rejected, seen, counts
        return self._transaction(work)

    def _new_rows(self, conn: sqlite3.Connection, device: str, rows: list[tuple]) -> list[tuple]:
        """Insert the rows (those the table has are ignored) and tell which were new: all of them,
        nearly always; when some were not, the new ones are read back. (The transaction holds the
        write lock, so the new rows are those past the largest id before; a savepoint instead made
        every insert a third dearer.)"""
        newest, insert, read_back = self._inserting[device]
        before = conn.execute(newest).fetchone()[0] or 0
        if conn.executemany(insert, rows).rowcount < len(rows):
            rows = conn.execute(read_back, (before,)).fetchall()
        return rows

    def delete(self, table, first_id, last_id):
        model = self.tables[table]
        sql, params = self.db.get_sql_context().sql(model.delete().where(model.id.between(first_id, last_id))).query()

        def work(conn):
            self.upkeep.deleting(conn, table, first_id, last_id)
            return conn.execute(sql, params).rowcount
        return self._transaction(work)

    def sizes(self):
        wal = self.wal_bytes()
        return Path(self.settings.path).stat().st_size + wal, wal

    def wal_bytes(self) -> int:
        try:
            return self._wal.stat().st_size
        except FileNotFoundError:
            return 0


class ServerStore(Store):
    """PostgreSQL: pooled connections; one transaction per commit, with a multi-row INSERT ... ON
    CONFLICT DO NOTHING per table."""

    def open(self, check: bool = True) -> None:
        self.db.connect(reuse_if_open=True)
        self._prepare()
        self._reject = insert_sql(RejectedMessage, self.db)
        self.upkeep = Upkeep(self.db, self.site, self.types)
        self.cursor = ServerCursor(self.db)
        log.info("database %s: PostgreSQL, schema version ok", self.where)

    def write(self, by_device, rejections, failures, wrong_clocks=None, stored_at="", ran=lambda: None, stale=()):
        with translated():
            return self._write(by_device, rejections, failures, wrong_clocks, stored_at, ran, stale)

    def _write(self, by_device, rejections, failures, wrong_clocks, stored_at, ran, stale):
        self.db.connect(reuse_if_open=True)
        with self.db.atomic():
            inserted = {}
            for device, rows in by_device.items():
                fields = self.fields[device]
                query = self.types[device].model.insert_many(rows, fields=fields).on_conflict_ignore()
                inserted[device] = list(query.returning(*fields).tuples().execute())  # the new rows alone
            rejected = self._rejections(self.cursor.execute, rejections)
            seen = self.upkeep.stored(self.cursor, inserted, wrong_clocks or {}, stored_at, stale)
            counts = failures.apply(self.cursor.execute)
            ran()
            return {device: len(rows) for device, rows in inserted.items()}, rejected, seen, counts

    def delete(self, table, first_id, last_id):
        model = self.tables[table]
        with translated(), self.db.atomic():
            self.upkeep.deleting(self.cursor, table, first_id, last_id)
            return model.delete().where(model.id.between(first_id, last_id)).execute()

    def sizes(self):
        try:
            return self.db.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0], 0
        except DRIVER_ERRORS:
            return 0, 0

    def failed(self) -> None:
        self.db.close()  # a connection that failed may be broken: the next try takes another


class Failures:
    """The failed-delivery counts of one transaction (see actors/mqtt/limit.py): count one more failure
    for each strike, returning the new counts; forget the cleared ones, and any the broker has
    not delivered again for a month."""
    TABLE = DeliveryFailure._meta.table_name

    def __init__(self, db: peewee.Database, strikes, cleared, now: str):
        self.strikes, self.cleared, self.now = strikes, sorted(cleared), now
        p = db.param
        insert = f"INSERT INTO {self.TABLE} (fingerprint, topic, failures, last_failed_at) VALUES ({p}, {p}, 1, {p})"
        self.count_sql = (f"{insert} ON CONFLICT (fingerprint) DO UPDATE SET failures = {self.TABLE}.failures + 1, "
                          "last_failed_at = excluded.last_failed_at RETURNING failures")
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
        for ack_id, fp, topic, look_up in self.strikes:
            if look_up:
                row = execute(self.read_sql, (fp,)).fetchone()
                counts.append((ack_id, row[0] if row else 0, False))
            else:
                counts.append((ack_id, execute(self.count_sql, (fp, topic, self.now)).fetchone()[0], True))
        return counts
