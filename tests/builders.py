"""Readings as devices send them, built in one place for every test, from the device types'
definitions (actors/devices/): a type's fields are its definition's, so a builder never disagrees
with what the service accepts."""

from __future__ import annotations

from actors.devices import BUILTIN_TYPES, DeviceTypes

DAY = "2026-04-01"


def second_of(day: str, n: int) -> str:
    """The timestamp of the n-th second of `day` (n < 86,400)."""
    return f"{day}T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}"


def reading(kind: str, device: str, n: int = 0, day: str = DAY, timestamp: str | None = None,
            types: DeviceTypes = BUILTIN_TYPES, **fields) -> dict:
    """A reading of any device type: its definition's n-th example values, `fields` over them, at
    `timestamp` or else the n-th second of `day`."""
    return {"device_id": device, **types[kind].example(n), **fields, "timestamp": timestamp or second_of(day, n)}


def temperature(device: str, n: int = 0, day: str = DAY, value: float | None = None,
                humidity: float = 50.0, status: str = "LOW", **extra) -> dict:
    """A temperature reading at the n-th second of `day`; `value` defaults to one that varies with n."""
    return reading("temperature", device, n, day, temperature=20.0 + n % 10 if value is None else value,
                   humidity=humidity, status=status, **extra)


def power(device: str, status: str, timestamp: str | None = None, n: int = 0, day: str = DAY, **extra) -> dict:
    """A power event: `status` is EB_ON, EB_OFF, DG_ON or DG_OFF."""
    return reading("power", device, n, day, timestamp, status=status, **extra)


def fingerprint(device: str, user_id: str, auth: str = "PASS", timestamp: str | None = None, n: int = 0,
                day: str = DAY, **extra) -> dict:
    """A fingerprint attempt by `user_id`: `auth` is PASS or FAIL."""
    return reading("fingerprint", device, n, day, timestamp, user_id=user_id, authStatus=auth, **extra)
