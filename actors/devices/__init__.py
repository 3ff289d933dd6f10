"""The device types: each one definition (definition.py) in a module of its own, composed of
reading fields (fields.py) and summary kinds (kinds.py). A fourth type is one more module like
temperature.py, and its name in BUILTIN_TYPES below: the set the service runs with (its tables are
made at the next start)."""

from __future__ import annotations

from collections.abc import Mapping

from peewee import Model

from actors.devices.definition import DeviceType
from actors.devices.fields import InvalidMessage
from actors.devices.fingerprint import FINGERPRINT
from actors.devices.power import POWER
from actors.devices.temperature import TEMPERATURE

__all__ = ["BUILTIN_TYPES", "DeviceType", "DeviceTypes", "InvalidMessage"]


class DeviceTypes(Mapping):
    """The device types a service runs with, by name, in a fixed order."""

    def __init__(self, *types: DeviceType):
        self._by_name = {t.name: t for t in types}
        assert len(self._by_name) == len(types), "device types have different names"
        self.by_reading_topic = {t.reading_topic: t for t in types}
        tables = [m._meta.table_name for t in types for m in (t.model, t.hourly)]
        assert len(set(tables)) == len(tables), "device types have tables of their own"

    def __getitem__(self, name: str) -> DeviceType:
        return self._by_name[name]

    def __iter__(self):
        return iter(self._by_name)

    def __len__(self):
        return len(self._by_name)

    def __repr__(self):
        return f"DeviceTypes({', '.join(self._by_name)})"

    def adding(self, *types: DeviceType) -> DeviceTypes:
        return DeviceTypes(*self.values(), *types)

    def reading_models(self) -> list[type[Model]]:
        return [t.model for t in self.values()]

    def rollup_models(self) -> list[type[Model]]:
        return [t.hourly for t in self.values()]


BUILTIN_TYPES = DeviceTypes(TEMPERATURE, POWER, FINGERPRINT)  # the contract's three, and a site's own after them
