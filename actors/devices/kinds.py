"""Summary kinds: what a device type's summaries say, composed rather than written. Each kind names
the reading fields it summarises, the columns it adds to the type's hourly rollup, how an hour's
rows fold into them (as lines of Python: storage/rollups.py makes one loop of a type's kinds), the
SQL that sums hours into a bucket, and the bucket's part of a reply.

- Gauge: a number's min, max and average (sums in whole millionths: exact in any order).
- Counts: how many readings had each value of a choice field.
- Distinct: how many different values a text field had (the rollup keeps one row per value).
- OnTime: states that stay ON until an event says otherwise: the seconds each source was ON
  (power's EB and DG); it is a type's whole summary, merged and read by its own code
  (storage/rollups.py StatesRollup, storage/summaries.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from peewee import BigIntegerField, DoubleField, Field, IntegerField, TextField

Columns = dict[str, Callable[[], Field]]  # a rollup's columns: name -> what makes its peewee field


def average(total: float, n: int) -> float | None:
    """The mean of values summed in whole millionths, to a millionth."""
    return round(total / n) / 1e6 if n and math.isfinite(total) else None


@dataclass(frozen=True)
class Gauge:
    """{"<field>": {"min", "max", "avg"}} of a numeric field."""
    field: str
    column: str = ""  # the stored column, set by the device type (devices/definition.py)

    def columns(self) -> Columns:
        return {f"{self.column}_min": DoubleField, f"{self.column}_max": DoubleField, f"{self.column}_sum": DoubleField}

    def merged(self) -> dict[str, str]:
        c = self.column
        return {f"{c}_min": f"{{least}}({{t}}.{c}_min, excluded.{c}_min)",
                f"{c}_max": f"{{greatest}}({{t}}.{c}_max, excluded.{c}_max)",
                f"{c}_sum": f"{{t}}.{c}_sum + excluded.{c}_sum"}

    # Folding a transaction's rows into one rollup row per key: `v` names the row's value, slots
    # s.. of the row being folded (h) are this kind's. min, max, and the sum in whole millionths.
    def start(self, v: str) -> list[str]:
        return [v, v, f"round({v} * 1e6)"]

    def add(self, v: str, s: int) -> list[str]:
        return [f"if {v} < h[{s}]: h[{s}] = {v}", f"elif {v} > h[{s + 1}]: h[{s + 1}] = {v}",
                f"h[{s + 2}] += round({v} * 1e6)"]

    def folded(self, s: int) -> list[str]:
        return [f"h[{s}]", f"h[{s + 1}]", f"float(h[{s + 2}])"]

    def select(self) -> list[str]:
        c = self.column
        return [f"MIN({c}_min)", f"MAX({c}_max)", f"SUM({c}_sum)"]

    def bucket(self, row: tuple | None, n: int) -> dict:
        low, high, total = row or (None, None, None)
        return {self.field: {"min": low, "max": high, "avg": average(total, n) if row else None}}


@dataclass(frozen=True)
class Counts:
    """{"<key>": n} per value of a choice field: how many readings had it."""
    field: str
    keys: dict[str, str]  # value -> its key in a bucket
    stored: dict[str, str] = field(default_factory=dict)  # value -> its rollup column, if not the key
    column: str = ""

    def columns(self) -> Columns:
        return {self.stored.get(v, k): IntegerField for v, k in self.keys.items()}

    def merged(self) -> dict[str, str]:
        return {c: f"{{t}}.{c} + excluded.{c}" for c in self.columns()}

    def start(self, v: str) -> list[str]:
        return [f"int({v} == {value!r})" for value in self.keys]

    def add(self, v: str, s: int) -> list[str]:
        return [f"h[{s + i}] += {v} == {value!r}" for i, value in enumerate(self.keys)]

    def folded(self, s: int) -> list[str]:
        return [f"h[{s + i}]" for i in range(len(self.keys))]

    def select(self) -> list[str]:
        return [f"SUM({c})" for c in self.columns()]

    def bucket(self, row: tuple | None, n: int) -> dict:
        return dict(zip(self.keys.values(), row or (0,) * len(self.keys)))


@dataclass(frozen=True)
class Distinct:
    """{"<key>": n}: how many different values a field had in the bucket."""
    field: str
    key: str
    column: str = ""

    def columns(self) -> Columns:
        return {}  # the value is part of the rollup row's key (DeviceType.rollup_key)

    def merged(self) -> dict[str, str]:
        return {}

    def start(self, v: str) -> list[str]:
        return []

    def add(self, v: str, s: int) -> list[str]:
        return []

    def folded(self, s: int) -> list[str]:
        return []

    def select(self) -> list[str]:
        return [f"COUNT(DISTINCT {self.column})"]

    def bucket(self, row: tuple | None, n: int) -> dict:
        return {self.key: row[0] if row else 0}


@dataclass(frozen=True)
class OnTime:
    """{"<prefix>_on_s": seconds} per source: a source is a stored column holding ON, OFF, or ""
    for an event about another source; it stays as its last event left it."""
    sources: dict[str, str]  # stored column -> the prefix of its rollup columns and bucket key

    def columns(self) -> Columns:
        columns = {}
        for prefix in self.sources.values():
            columns |= {f"{prefix}_first_us": partial(BigIntegerField, null=True),  # null: no event this hour
                        f"{prefix}_on_us": BigIntegerField, f"{prefix}_last": TextField,
                        f"{prefix}_last_at": partial(TextField, null=True)}
        return columns



Kind = Gauge | Counts | Distinct | OnTime
