"""Power monitors: an event names one source (EB: the grid, DG: the generator) going ON or OFF.
The row keeps what the device said; a reply record shows both sources' state after the event,
carrying the other source's latest earlier value, so it is computed at query time in timestamp
order and arrival order never matters. Summaries: the seconds each source was ON."""

from __future__ import annotations

from peewee import Select, TextField, fn

from actors.devices.definition import DeviceType
from actors.devices.fields import Choice, choice_field
from actors.devices.kinds import OnTime


class Power(DeviceType):
    STATUSES = {"EB_ON": ("ON", ""), "EB_OFF": ("OFF", ""), "DG_ON": ("", "ON"), "DG_OFF": ("", "OFF")}
    blank = ("", "")

    def __init__(self):
        super().__init__(
            "power", topic="home/power", request="home/getpower", reply="home/datapower",
            table="power_status_logs", hourly_table="power_hourly",
            fields=(Choice("status", tuple(self.STATUSES)),),
            # ON, OFF, or "" when the event was about the other source
            columns={"ebstatus": TextField, "dgstatus": TextField},
            summary=(OnTime({"ebstatus": "eb", "dgstatus": "dg"}),))
        self.carried = self.value_columns

    def values(self, obj):
        return self.STATUSES[choice_field(obj, "status", tuple(self.STATUSES))]

    def _records_function(self):
        def records(rows, state):
            eb, dg = state  # each source's state so far: an event of the other source leaves it as it was
            return [{"ebstatus": (eb := ebstatus or eb), "dgstatus": (dg := dgstatus or dg), "timestamp": timestamp}
                    for ebstatus, dgstatus, timestamp in rows]
        return records

    def state_before(self, device_id, date, before):
        return tuple(self._latest_before(device_id, date, before, c) for c in self.value_columns)

    def state_after(self, record):
        return record["ebstatus"], record["dgstatus"]

    def latest_record(self, latest, carried):
        *values, timestamp = latest
        return self.record((*(carried.get(c) or v for c, v in zip(self.value_columns, values)), timestamp))

    def cursor_values(self, values):
        obj = dict(zip(self.value_columns, values))  # the stored columns: ON, OFF or ""
        return tuple(choice_field(obj, c, ("ON", "OFF", "")) for c in self.value_columns)

    def cursor_state(self, state):
        if len(state) != 2:
            raise ValueError
        return self.cursor_values(state)

    def _latest_before(self, device_id: str, date: str, before: str | None, column: str) -> str:
        m = self.model
        field = getattr(m, column)
        earlier = m.date < date
        if before:
            earlier |= (m.date == date) & (m.timestamp < before)
        latest = (m.select(field)
                  .where((m.device_id == device_id) & earlier & (field != ""))
                  .order_by(m.date.desc(), m.timestamp.desc())
                  .limit(1).scalar())
        return latest or ""

    def kept_past_retention(self, cutoff):
        """Each device's latest event of each source before the cutoff: the state it set
        carries into the days that are kept."""
        m = self.model
        kept = set()
        for source in (getattr(m, c) for c in self.value_columns):
            newest_first = fn.ROW_NUMBER().over(partition_by=[m.device_id],
                                                order_by=[m.date.desc(), m.timestamp.desc(), m.id.desc()])
            ranked = m.select(m.id, newest_first.alias("n")).where((m.date < cutoff) & (source != "")).alias("r")
            latest = Select([ranked], [ranked.c.id]).where(ranked.c.n == 1)
            kept.update(row[0] for row in m._meta.database.execute(latest))
        return kept


POWER = Power()
