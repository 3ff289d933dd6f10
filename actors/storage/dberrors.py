"""The database's transient failures, told in one place: a locked file (an operator's sqlite3
session), a full disk, a read-only file or filesystem, an I/O error, a database server gone away.
Every actor meets them the same way: it waits and tries again with backoff, saying so once per
episode, and never crashes on them (the supervisor's crash limit is for bugs).

The drivers raise their own classes (sqlite3, psycopg2) or peewee's wrappers of them, and pykka
hands a failed ask's exception to the asker as it was raised: so driver errors are translated into
StoreUnavailable where the database is used (`translated`), and nothing else catches them."""

from __future__ import annotations

import logging
import sqlite3
import time
from contextlib import contextmanager
from typing import Iterator

import peewee
import psycopg2

# Errors worth waiting out. Not here: a damaged file (sqlite3.DatabaseError), a constraint or a
# programming error; those are bugs or need an operator, and crash as they should.
DRIVER_ERRORS = (sqlite3.OperationalError, peewee.OperationalError, peewee.InterfaceError,
                 psycopg2.OperationalError, psycopg2.InterfaceError)


class StoreUnavailable(Exception):
    """The database cannot be used just now; the same work may succeed later."""


def locked(exc: BaseException) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


@contextmanager
def translated() -> Iterator[None]:
    """Driver errors worth waiting out, raised as StoreUnavailable (the driver's as its cause)."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise StoreUnavailable(str(exc).strip() or type(exc).__name__) from exc


class Episode:
    """An actor's wait for the database: the delay before each retry (doubling from `first` up to
    `cap`), one line when it starts (`failing`, with the reason) and one when it ends (`resumed`,
    with how long it took); the retries between are logged at DEBUG."""

    def __init__(self, log: logging.Logger, failing: str, resumed: str, first: float, cap: float,
                 clock=time.monotonic):
        self.log, self.failing, self.resumed = log, failing, resumed
        self.first, self.cap = first, cap
        self.clock = clock
        self.since: float | None = None  # when this episode began
        self.delay = first

    def failed(self, exc: BaseException) -> float:
        """Seconds to wait before trying again."""
        if self.since is None:
            self.since = self.clock()
            self.delay = self.first
            self.log.error(self.failing, exc)
        else:
            self.log.debug("still failing: %s", exc)
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def succeeded(self) -> None:
        if self.since is not None:
            self.log.warning(self.resumed, self.clock() - self.since)
            self.since = None
        self.delay = self.first
