"""`system.py --redate`: the stored readings moved to the site's current calendar (site.timezone),
with the service stopped. A reading stored with an offset gets the `date` the zone gives it, and
the hourly rollups behind summaries are built again from the stored readings, all in one
transaction: it is done whole or not at all.

Only while the rollups count nothing the tables no longer hold: once retention has deleted readings,
their hours live only in the rollups, and building those again would lose them (refused, saying so).
A reading stored twice because its date changed with the zone (sent again after a change) is the
same reading: the copy is deleted and the catalogue's count lowered."""

from __future__ import annotations

import peewee

from actors.devices import BUILTIN_TYPES, DeviceType, DeviceTypes
from actors.protocol.sitetime import SiteTime
from actors.runtime.settings import Settings
from actors.storage.models import Device, connect_database
from actors.storage.rollups import Upkeep, cursor_of, stored_rows
from actors.storage.schema import SCHEMA_VERSION, current_version

BATCH = 10_000


class Incomplete(Exception):
    """The rollups hold readings the tables no longer do; the message says where."""


def redate_command(settings: Settings, out=print) -> int:
    """--redate: 0 when done, 1 when it cannot be (the reason printed; nothing changed)."""
    zone = settings.site.timezone or "none (timestamps as the devices wrote them)"
    db = connect_database(settings.database, 1, settings.types)
    try:
        db.connect()
        if current_version(db) != SCHEMA_VERSION:
            out(f"redate: the database is not at schema version {SCHEMA_VERSION}: start the service once first")
            return 1
        done = redate(db, SiteTime(settings.site.timezone), settings.types)
    except (Incomplete, peewee.DatabaseError) as exc:
        out(f"redate: nothing changed: {exc}")
        return 1
    finally:
        db.close()
    for name, (moved, copies) in done.items():
        out(f"redate: {name}: {moved} readings moved to another date, {copies} stored twice deleted; "
            "hourly summaries built again")
    out(f"redate: done; the site's time zone: {zone}")
    return 0


def redate(db: peewee.Database, site: SiteTime, types: DeviceTypes = BUILTIN_TYPES) -> dict[str, tuple[int, int]]:
    """Per device type: (rows whose date changed, copies deleted). Incomplete if it cannot be done."""
    done = {}
    with db.atomic():
        for name, device in types.items():
            _check_complete(db, name, device)
        upkeep, cursor = Upkeep(db, site, types), cursor_of(db)
        for name, device in types.items():
            done[name] = _redate_rows(db, device, site)
            device.hourly.delete().execute()
            for rows in stored_rows(device, BATCH):
                upkeep.rollups[name].merge(cursor, rows)
    return done


def _check_complete(db: peewee.Database, name: str, device: DeviceType) -> None:
    model = device.hourly
    rollups = db.execute_sql(f"SELECT COALESCE(SUM(readings), 0) FROM {model._meta.table_name}").fetchone()[0]
    stored = device.model.select().count()
    if rollups != stored:
        raise Incomplete(f"{model._meta.table_name} counts {rollups} {name} readings, {device.model._meta.table_name} "
                         f"holds {stored}: retention has deleted readings whose summaries only the rollups keep. "
                         "Restore the archived days first (deploy/README.md, Retention and archive), or keep the "
                         "days before the change in the old calendar")


def _redate_rows(db: peewee.Database, device: DeviceType, site: SiteTime) -> tuple[int, int]:
    """Give every row with an offset its date in the site's calendar; (re-dated, copies deleted)."""
    m = device.model
    values = [getattr(m, c) for c in device.value_columns]
    update = f"UPDATE {m._meta.table_name} SET date = {db.param} WHERE id = {db.param}"
    moved = copies = 0
    last_id = 0
    while rows := list(m.select(m.id, m.device_id, m.timestamp, m.date, *values)
                       .where((m.id > last_id) & (peewee.fn.LENGTH(m.timestamp) > 19))
                       .order_by(m.id).limit(BATCH).tuples()):
        last_id = rows[-1][0]
        changes = [(new, row) for row in rows if (new := _date_at(site, row[2], row[3])) != row[3]]
        try:
            with db.atomic():  # a savepoint: a batch holding a copy is done again row by row
                _executemany(db, update, [(new, row[0]) for new, row in changes])
            moved += len(changes)
            continue
        except peewee.IntegrityError:
            pass
        for new, (row_id, device_id, timestamp, _, *row_values) in changes:
            same = (m.device_id == device_id) & (m.date == new) & (m.timestamp == timestamp)
            for column, value in zip(values, row_values):
                same &= column == value
            if m.select().where(same).exists():  # this reading, stored again after the zone changed
                m.delete().where(m.id == row_id).execute()
                Device.update(readings=Device.readings - 1).where(
                    (Device.type == device.name) & (Device.device_id == device_id)).execute()
                copies += 1
            else:
                m.update(date=new).where(m.id == row_id).execute()
                moved += 1
    return moved, copies


def _date_at(site: SiteTime, timestamp: str, date: str) -> str:
    try:
        return site.local(timestamp)[:10]
    except ValueError:  # a timestamp the original program stored as it came: its date stays
        return date


def _executemany(db: peewee.Database, sql: str, params: list[tuple]) -> None:
    with peewee.__exception_wrapper__:  # the driver's errors as peewee's, as execute_sql raises them
        db.cursor().executemany(sql, params)

