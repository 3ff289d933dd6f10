"""Readings as devices send them, built in one place for every test."""

from __future__ import annotations


def second_of(day: str, n: int) -> str:
    """The timestamp of the n-th second of `day` (n < 86,400)."""
    return f"{day}T{n // 3600:02d}:{n // 60 % 60:02d}:{n % 60:02d}"


def temperature(device: str, n: int = 0, day: str = "2026-04-01", value: float | None = None,
                humidity: float = 50.0, status: str = "LOW", **extra) -> dict:
    """A temperature reading at the n-th second of `day`; `value` defaults to one that varies with n."""
    return {"device_id": device, "temperature": 20.0 + n % 10 if value is None else value, "humidity": humidity,
            "status": status, "timestamp": second_of(day, n), **extra}

