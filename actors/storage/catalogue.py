"""The device catalogue as apps read it (home/getdevices/{app_id}): every device the app may read,
by type and device id, from the `devices` table that each commit keeps up to date (rollups.py), so
that no request scans the reading tables."""

from __future__ import annotations

from typing import Callable

import orjson
import peewee

from actors.devices import DeviceTypes
from actors.protocol.requests import CatalogueAsk
from actors.storage.models import Device

READ_ROWS = 500  # catalogue rows read at a time while some are not the app's to read


class CatalogueReader:
    def __init__(self, db: peewee.Database, live_types: set[str], types: DeviceTypes):
        """`live_types`: the device types with liveness (the others have no `state`)."""
        self.db = db
        self.live_types = live_types
        self.types = types
        # the columns replies carry forward, of every type (DeviceType.carried)
        self.carried = sorted({c for t in types.values() for c in t.carried})
        p = db.param
        columns = ", ".join(["type, device_id, first_seen, last_seen, received_at, readings, state, latest, "
                             "clock_rejected", *self.carried])
        table = Device._meta.table_name
        self._sql = {}
        for typed in (False, True):
            for after in (False, True):
                where = [f"type = {p}"] * typed + [f"(type, device_id) > ({p}, {p})"] * after
                self._sql[typed, after] = (f"SELECT {columns} FROM {table}" + (" WHERE " if where else "")
                                           + " AND ".join(where) + f" ORDER BY type, device_id LIMIT {p}")

    def entries(self, ask: CatalogueAsk, may_read: Callable[[str], bool], wanted: int) -> list[dict]:
        """Up to `wanted` entries after the cursor, of the devices `may_read` allows."""
        entries, after = [], ask.after
        while len(entries) < wanted:
            params = [ask.type] * (ask.type is not None) + list(after or ()) + [READ_ROWS]
            rows = list(self.db.execute_sql(self._sql[ask.type is not None, after is not None], params))
            entries += [self.entry(row) for row in rows if may_read(row[1])]
            if len(rows) < READ_ROWS:
                break
            after = rows[-1][:2]
        return entries[:wanted]

    def entry(self, row: tuple) -> dict:
        kind, device_id, first_seen, last_seen, received_at, readings, state, latest, clock, *carried = row
        device = self.types[kind]
        return {"device_id": device_id, "type": kind, "first_seen": first_seen, "last_seen": last_seen,
                "received_at": received_at, "readings": readings,
                "state": state if kind in self.live_types else None,
                "latest": device.latest_record(orjson.loads(latest), dict(zip(self.carried, carried))) if latest else None,
                "clock_rejected": clock}
