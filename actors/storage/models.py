"""The database: the service's own tables as peewee models (each device type's reading table and
hourly rollup are made from its definition, devices/definition.py), and the process's connection.

Each reading table has one unique index that starts with (device_id, date, timestamp): day queries
use it as their index, and it is also the reading's identity, so a redelivered reading is ignored
(INSERT OR IGNORE) while two different readings with the same timestamp are both kept."""

from __future__ import annotations

from datetime import datetime, timezone

from peewee import (
    AutoField,
    BigIntegerField,
    BlobField,
    Database,
    IntegerField,
    Model,
    ModelIndex,
    SqliteDatabase,
    TextField,
)
from playhouse.db_url import parse
from playhouse.pool import PooledPostgresqlDatabase

from actors.devices import BUILTIN_TYPES, DeviceTypes


class TopicField(TextField):
    """Text in SQLite, bytes (BYTEA) in PostgreSQL: the contract's conformance suite reads a
    rejected message's topic back as bytes from PostgreSQL, as SQLite gives it with raw access."""
    field_type = "TOPIC"

    def db_value(self, value):
        if isinstance(value, str) and not is_sqlite(self.model._meta.database):
            return value.encode()
        return value

    def python_value(self, value):
        return bytes(value).decode("utf-8", "backslashreplace") if isinstance(value, (bytes, memoryview)) else value


class RejectedMessage(Model):
    id = AutoField()
    topic = TopicField()
    payload = BlobField()  # byte for byte as received
    reason = TextField()
    received_at = TextField()  # UTC
    # what identifies the message (messages.fingerprint): one delivered again (retained, or
    # redelivered after a lost connection) is not kept twice
    fingerprint = TextField(null=True)

    class Meta:
        table_name = "rejected_messages"


class DeliveryFailure(Model):
    """A message that was in hand when the service failed, and how many times in a row (the
    delivery limit: see actors/mqtt/limit.py). Deleted once the message has been handled."""
    id = AutoField()
    fingerprint = TextField(unique=True)  # hex: a digest of its topic, payload and reply topic
    topic = TextField()
    failures = IntegerField()
    last_failed_at = TextField()  # UTC

    class Meta:
        table_name = "delivery_failures"


class Device(Model):
    """The device catalogue: one row per device that has sent a reading (or one whose clock could not
    be right), kept up to date in the transaction that stores its readings, so that listing the
    devices never scans the reading tables."""
    id = AutoField()
    type = TextField()  # its device type's name
    device_id = TextField()
    first_seen = TextField(null=True)  # the earliest reading's timestamp, as sent
    last_seen = TextField(null=True)  # the latest reading's timestamp, as sent
    received_at = TextField(null=True)  # UTC, when its latest reading was stored
    readings = BigIntegerField(default=0)  # how many are stored (retention deletes some)
    latest = TextField(null=True)  # JSON: the latest row's values and timestamp
    # the latest state of each column replies carry forward (DeviceType.carried: power's), and when
    ebstatus = TextField(null=True)  # power: the latest EB state (ON/OFF) ...
    ebstatus_at = TextField(null=True)  # ... and that event's timestamp
    dgstatus = TextField(null=True)  # power: the same for DG
    dgstatus_at = TextField(null=True)
    clock_rejected = IntegerField(default=0)  # readings rejected for a clock that cannot be right
    state = TextField(null=True)  # liveness: live or stale (see actors/protocol/liveness.py)

    class Meta:
        table_name = "devices"
        indexes = ((("type", "device_id"), True),)


RejectedMessage.add_index(ModelIndex(RejectedMessage, [RejectedMessage.fingerprint], name="rejected_messages_fingerprint"))

SERVICE_MODELS = (RejectedMessage, DeliveryFailure, Device)  # beside each device type's own (devices/definition.py)


def all_models(types: DeviceTypes) -> list[type[Model]]:
    return [*types.reading_models(), *SERVICE_MODELS, *types.rollup_models()]


def utc_now() -> str:
    """UTC in SQLite's own CURRENT_TIMESTAMP format (created_at, received_at), so sqlite3 users
    can compare them with datetime('now')."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def open_database(path: str, busy_timeout: float, wal_limit_mb: int = 16,
                  types: DeviceTypes = BUILTIN_TYPES) -> SqliteDatabase:
    """The one database object of the process: one connection per thread, WAL, and
    synchronous=FULL because a reading is acknowledged to the broker once committed. After a
    checkpoint, SQLite truncates a WAL larger than `wal_limit_mb` back to that size."""
    db = SqliteDatabase(path, timeout=busy_timeout, field_types={"TOPIC": "TEXT"}, pragmas={
        "journal_mode": "wal",
        "synchronous": "full",
        "journal_size_limit": wal_limit_mb * 2**20,
    })
    db.bind(all_models(types))
    return db


def connect_database(settings, connections: int, types: DeviceTypes = BUILTIN_TYPES) -> Database:
    """The process's database: SQLite at settings.path, or PostgreSQL at settings.url with a pool
    of up to `connections` connections (one per actor thread that uses it)."""
    if not settings.url:
        return open_database(settings.path, settings.busy_timeout, settings.checkpoint_mb, types)
    db = PooledPostgresqlDatabase(**parse(settings.url), max_connections=connections, stale_timeout=300,
                                  timeout=settings.busy_timeout or None, field_types={"TOPIC": "BYTEA"})
    db.bind(all_models(types))
    return db


def is_sqlite(db: Database) -> bool:
    return isinstance(db, SqliteDatabase)


def insert_sql(model: type[Model], database) -> str:
    """INSERT OR IGNORE for one row of every column but id, built by peewee once and then
    run with executemany: ~4 µs a row against ~20 µs for insert_many with dicts."""
    columns = [f for f in model._meta.sorted_fields if f.name != "id"]
    query = model.insert({f: None for f in columns}).on_conflict_ignore()
    sql, _ = database.get_sql_context().sql(query).query()
    return sql


def insert_fields(model: type[Model]) -> list:
    """The fields insert_sql() writes, in its order (every one but id)."""
    return [f for f in model._meta.sorted_fields if f.name != "id"]
