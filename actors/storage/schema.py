"""Schema versions, and the upgrade of an older database in place at start-up (by the writer).

Version 1 is the original program's schema, as its README describes it: the three reading tables,
no `rejected_messages`, no identity index, timestamps as devices sent them. Version 2 added those;
version 3, `delivery_failures` (the delivery limit); version 4, the device catalogue and the hourly
rollups (`devices`, `*_hourly`), built from the rows already stored; version 5, each power hour's
last event per source instead of its whole list of events, and each rejection's fingerprint; version
6, `readings` in every rollup (fingerprint_hourly had none). The current version is what models.py
and the device types declare. The version lives in the `schema_version` table. An upgrade runs in one
transaction: it either completes or leaves the file as it was. The upgrades are of the contract's
three types; a type added later gets its tables at the first start that knows it."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import datetime

import orjson
import peewee

from actors.devices import BUILTIN_TYPES, DeviceTypes
from actors.protocol.messages import Rejection, fingerprint
from actors.storage.models import DeliveryFailure, Device, RejectedMessage, all_models
from actors.storage.rollups import Upkeep, cursor_of, stored_rows

log = logging.getLogger(__name__)
SCHEMA_VERSION = 6
BACKFILL_ROWS = 10_000
SCHEMA_LOCK = 0x6D717474  # the PostgreSQL advisory lock of the schema step ('mqtt')


class SchemaVersion(peewee.Model):
    version = peewee.IntegerField()

    class Meta:
        table_name = "schema_version"


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of the service."""


def prepare(db: peewee.Database, types: DeviceTypes = BUILTIN_TYPES) -> None:
    """Create a new database at the current version, or bring an older one up to it, with the
    tables of every type in `types`. A database that is current is only read: start-up does not
    wait for someone else's write lock."""
    SchemaVersion.bind(db)
    if is_current(db) and not _missing(db, types):
        return
    with _exclusively(db):
        version = current_version(db)
        if version == SCHEMA_VERSION and SchemaVersion.table_exists():
            _add_types(db, types)
            return
        if version is None:
            db.create_tables([*all_models(types), SchemaVersion])
            if not isinstance(db, peewee.SqliteDatabase):
                _byte_order_text(db, all_models(types))
        elif version > SCHEMA_VERSION:
            raise SchemaTooNew(f"the database has schema version {version}, newer than this service's "
                               f"({SCHEMA_VERSION}): it was written by a newer release; install that release")
        elif version < SCHEMA_VERSION:
            for step in range(version, SCHEMA_VERSION):
                log.warning("upgrading the database schema from version %d to %d", step, step + 1)
                UPGRADES[step](db)
            _add_types(db, types)
        db.create_tables([SchemaVersion])
        SchemaVersion.delete().execute()
        SchemaVersion.create(version=SCHEMA_VERSION)


def _missing(db: peewee.Database, types: DeviceTypes) -> list[type[peewee.Model]]:
    tables = set(db.get_tables())
    return [m for t in types.values() for m in (t.model, t.hourly) if m._meta.table_name not in tables]


def _add_types(db: peewee.Database, types: DeviceTypes) -> None:
    """The tables of device types the database has not seen yet (a type added to the site)."""
    if missing := _missing(db, types):
        db.create_tables(missing)
        if not isinstance(db, peewee.SqliteDatabase):
            _byte_order_text(db, missing)
        log.warning("new device types: tables %s created", ", ".join(m._meta.table_name for m in missing))


def is_current(db: peewee.Database) -> bool:
    SchemaVersion.bind(db)
    return current_version(db) == SCHEMA_VERSION and SchemaVersion.table_exists()


@contextmanager
def _exclusively(db: peewee.Database):
    """One transaction that other instances of the service (on the same SQLite file, or on the
    same PostgreSQL database from other machines) wait for rather than interleave with: in
    SQLite the write lock is taken up front (a read that later writes would fail as soon as
    another instance commits in between), in PostgreSQL a transaction-scoped advisory lock
    (two instances creating the tables at once would collide)."""
    if isinstance(db, peewee.SqliteDatabase):
        with db.atomic("IMMEDIATE"):
            yield
        return
    with db.atomic():
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        yield


def current_version(db: peewee.Database) -> int | None:
    """None for an empty database."""
    SchemaVersion.bind(db)
    tables = set(db.get_tables())
    if "schema_version" in tables:
        return SchemaVersion.select(peewee.fn.MAX(SchemaVersion.version)).scalar()
    if "temperature_logs" not in tables:
        return None
    # Before versions were recorded: this service's first release had the identity indexes.
    indexes = {i.name for i in db.get_indexes("temperature_logs")}
    return 2 if "temperature_logs_identity" in indexes else 1


def _byte_order_text(db: peewee.Database, models) -> None:
    """PostgreSQL compares text by the database's locale, which may ignore punctuation; days must
    sort and page by timestamp exactly as in SQLite (byte order), so the text columns use "C"."""
    for model in models:
        for f in model._meta.sorted_fields:
            if f.field_type == "TEXT":
                db.execute_sql(f'ALTER TABLE "{model._meta.table_name}" ALTER COLUMN "{f.column_name}" '
                               'TYPE text COLLATE "C"')


def _upgrade_1_to_2(db: peewee.Database) -> None:
    """The original schema -> ours: timestamps in canonical form (so that a day sorts in time
    order), exact repeats of a reading removed (the same device, time and values: the first
    kept), the identity indexes, and the rejected_messages table."""
    for device in BUILTIN_TYPES.values():
        m = device.model
        canonical, unreadable = 0, 0
        for row_id, timestamp in list(m.select(m.id, m.timestamp).tuples()):
            try:
                moment = datetime.fromisoformat(timestamp)
            except (TypeError, ValueError):
                unreadable += 1
                continue
            if moment.isoformat() != timestamp:
                m.update(timestamp=moment.isoformat(), date=moment.date().isoformat()).where(m.id == row_id).execute()
                canonical += 1
        identity = [m.device_id, m.date, m.timestamp, *(getattr(m, c) for c in device.value_columns)]
        first = m.select(peewee.fn.MIN(m.id)).group_by(*identity)
        repeats = m.delete().where(m.id.not_in(first)).execute()
        m._schema.create_indexes()  # the identity index, as models.py names it
        log.warning("%s: %d timestamps put in canonical form, %d repeated readings removed%s",
                    m._meta.table_name, canonical, repeats,
                    f", {unreadable} timestamps left as they were (not ISO 8601)" if unreadable else "")
    db.create_tables([RejectedMessage])


def _upgrade_2_to_3(db: peewee.Database) -> None:
    db.create_tables([DeliveryFailure])
    if not isinstance(db, peewee.SqliteDatabase):
        _byte_order_text(db, [DeliveryFailure])


def _upgrade_3_to_4(db: peewee.Database) -> None:
    """The catalogue and the rollups, from every stored row, as if they had just been stored."""
    db.create_tables([Device, *BUILTIN_TYPES.rollup_models()])
    if not isinstance(db, peewee.SqliteDatabase):
        _byte_order_text(db, [Device, *BUILTIN_TYPES.rollup_models()])
    upkeep, cursor = Upkeep(db), cursor_of(db)
    for name, device in BUILTIN_TYPES.items():
        m, rows_done = device.model, 0
        for rows in stored_rows(device, BACKFILL_ROWS):
            upkeep.stored(cursor, {name: rows}, {}, "")
            rows_done += len(rows)
        # when each device's latest reading was stored
        latest = m.select(peewee.fn.MAX(m.created_at)).where(m.device_id == Device.device_id)
        Device.update(received_at=latest).where(Device.type == name).execute()
        log.warning("%s: the catalogue and hourly summaries built from %d stored readings", m._meta.table_name,
                    rows_done)


def _upgrade_4_to_5(db: peewee.Database) -> None:
    """power_hourly: each source's last event's timestamp (from the hour's list of events, then
    dropped); rejected_messages: the fingerprint (of the rows already kept, too). A database
    upgraded from version 3 got the tables of version 5 at once: only what is missing is done."""
    p, power = db.param, BUILTIN_TYPES["power"].hourly._meta.table_name
    if "events" in {c.name for c in db.get_columns(power)}:
        for name in ("eb_last_at", "dg_last_at"):
            db.execute_sql(f"ALTER TABLE {power} ADD COLUMN {name} TEXT")
        for rows in _batches(db, power, "events"):
            for row_id, events in rows:
                events = orjson.loads(events)
                last_at = [max((e[0] for e in events if e[source]), default=None) for source in (1, 2)]
                db.execute_sql(f"UPDATE {power} SET eb_last_at = {p}, dg_last_at = {p} WHERE id = {p}",
                               (*last_at, row_id))
        db.execute_sql(f"ALTER TABLE {power} DROP COLUMN events")
        if not isinstance(db, peewee.SqliteDatabase):
            _byte_order_text(db, [BUILTIN_TYPES["power"].hourly])
    rejected = RejectedMessage._meta.table_name
    if "fingerprint" not in {c.name for c in db.get_columns(rejected)}:
        db.execute_sql(f"ALTER TABLE {rejected} ADD COLUMN fingerprint TEXT")
        for rows in _batches(db, rejected, "topic, payload"):
            for row_id, topic, payload in rows:
                digest = fingerprint(Rejection(RejectedMessage.topic.python_value(topic), bytes(payload), "", "")).hex()
                db.execute_sql(f"UPDATE {rejected} SET fingerprint = {p} WHERE id = {p}", (digest, row_id))
        RejectedMessage._schema.create_indexes()
        if not isinstance(db, peewee.SqliteDatabase):
            _byte_order_text(db, [RejectedMessage])


def _upgrade_5_to_6(db: peewee.Database) -> None:
    """fingerprint_hourly: the readings of each row (its passes and fails), as every rollup has them.
    A database upgraded from version 3 or 4 has the column already."""
    table = BUILTIN_TYPES["fingerprint"].hourly._meta.table_name
    if "readings" not in {c.name for c in db.get_columns(table)}:
        db.execute_sql(f"ALTER TABLE {table} ADD COLUMN readings INTEGER NOT NULL DEFAULT 0")
        db.execute_sql(f"UPDATE {table} SET readings = passes + fails")


def _batches(db: peewee.Database, table: str, columns: str):
    """(id, columns...) of every row of `table`, BACKFILL_ROWS at a time, in id order."""
    last_id = 0
    while rows := list(db.execute_sql(f"SELECT id, {columns} FROM {table} WHERE id > {db.param} ORDER BY id "
                                      f"LIMIT {BACKFILL_ROWS}", (last_id,))):
        yield rows
        last_id = rows[-1][0]


UPGRADES = {1: _upgrade_1_to_2, 2: _upgrade_2_to_3, 3: _upgrade_3_to_4, 4: _upgrade_4_to_5, 5: _upgrade_5_to_6}
