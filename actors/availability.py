"""The availability actor: watches which devices are still reporting (liveness.py) and says so. Every
change of a device's state is published, retained, on home/availability/{type}/{device_id}, logged
once (WARNING when it goes stale, INFO when it is back) and counted in the stats; a stale state is
also kept in the catalogue (by the writer, which publishes it once stored, so that an app that saw
it also reads it there), so that a restart neither forgets nor repeats it.

The writer tells it which devices each commit stored readings of (Seen); a timer wakes it when the
next live device would go stale."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import orjson
import peewee

from actors.mqtt.packets import MAX_TOPIC_BYTES, topic_problem
from actors.protocol.liveness import LIVE, STALE, Change, Liveness
from actors.protocol.messages import Availability, MarkStale, Seen
from actors.runtime.peers import LINK, WRITER, Peers
from actors.runtime.settings import DevicesSettings
from actors.runtime.supervised import Supervised
from actors.storage.dberrors import Episode, StoreUnavailable, translated
from actors.storage.models import Device

log = logging.getLogger(__name__)
TOPIC = "home/availability"
FIRST_RETRY, MAX_RETRY = 5.0, 300.0  # reading the catalogue again at start-up
LOGGED_EACH = 10  # changes logged one by one in a batch; the rest in one line
# What the commits stored is looked at once they pause this long (or have gone on for MAX_DEFER):
# a fleet's first minute stores its readings first and announces its devices right after.
SETTLE, MAX_DEFER = 0.1, 1.0


@dataclass(frozen=True, slots=True)
class CheckNow:
    """The timer -> the availability actor: a device may have gone stale."""


@dataclass(frozen=True, slots=True)
class Settle:
    """The timer -> the availability actor: the readings stored may have paused (see on_receive)."""


@dataclass(frozen=True, slots=True)
class LoadNow:
    """The timer -> the availability actor: read the catalogue again (it could not be read)."""


def availability_topic(kind: str, device_id: str) -> str | None:
    """Where a device's availability is published; None if its id cannot be one topic level."""
    topic = f"{TOPIC}/{kind}/{device_id}"
    if device_id.isascii() and device_id.isprintable() and len(topic) <= MAX_TOPIC_BYTES \
            and "/" not in device_id and "+" not in device_id and "#" not in device_id:
        return topic  # the usual id, told at once (a fleet's first minute has thousands)
    return None if "/" in device_id or topic_problem(topic) else topic


class Said:
    """The log lines of one batch of changes: the first LOGGED_EACH of each state one by one, then one
    line for the rest (a fleet going silent at once is one line, not one per device; the stats count them all)."""

    def __init__(self):
        self.more: dict[str, int] = {}

    def change(self, change: Change) -> None:
        kind, device_id = change.type, change.device_id
        if change.state == LIVE and change.was is None:
            return  # a new device: the catalogue lists it, the stats count it
        if self.more.get(change.state, 0) < LOGGED_EACH:
            if change.state == STALE:
                log.warning("%s device %s is stale: nothing from it since %s UTC (its latest reading is of %s)",
                            kind, device_id, change.received_at, change.last_seen)
            else:
                log.info("%s device %s is live again (a reading of %s)", kind, device_id, change.last_seen)
        self.more[change.state] = self.more.get(change.state, 0) + 1

    def done(self) -> None:
        for state, n in self.more.items():
            if n > LOGGED_EACH:
                (log.warning if state == STALE else log.info)(
                    "... and %d more devices are %s (%d in all at once)", n - LOGGED_EACH,
                    "stale" if state == STALE else "live again", n)


class AvailabilityActor(Supervised):
    def __init__(self, name: str, database: peewee.Database, settings: DevicesSettings, peers: Peers,
                 supervisor=None, clock=time.time):
        super().__init__(name, supervisor)
        self.db = database
        self.peers = peers
        self.clock = clock
        self.liveness = Liveness(settings)
        self._timer: threading.Timer | None = None
        self._timer_due: float | None = None
        self._loader: threading.Timer | None = None
        self._episode = Episode(log, "cannot read the device catalogue (%s); watching only the devices heard "
                                     "from now on until it can be read", "the device catalogue was read after %.0f s",
                                FIRST_RETRY, MAX_RETRY)
        self._said_full = False
        self._pending: list[tuple[Seen, float]] = []  # what commits stored, and when we heard it
        self._settler: threading.Timer | None = None
        self._first_pending = self._last_pending = 0.0

    def on_start(self):
        self._load()

    def _load(self) -> None:
        """What the catalogue knows (a device heard since this start stays as heard); a catalogue that
        cannot be read just now is read again later, while new readings are watched meanwhile."""
        self._loader = None
        try:
            with translated():
                self.db.connect(reuse_if_open=True)
                try:
                    rows = (Device.select(Device.type, Device.device_id, Device.last_seen, Device.received_at,
                                          Device.state).where(Device.type.in_(sorted(self.liveness.types))))
                    if rows.count() > self.liveness.max_known:  # the most recently heard are watched
                        rows = rows.order_by(Device.received_at.desc()).limit(self.liveness.max_known)
                    self.liveness.load(rows.tuples().iterator(), self.clock())  # streamed: a row at a time
                finally:
                    self.db.close()  # the rest is in memory
        except StoreUnavailable as exc:
            self._loader = self.tell_later(self._episode.failed(exc), LoadNow())
            return
        self._episode.succeeded()
        log.info("watching %d devices for liveness (%s)", len(self.liveness), ", ".join(
            f"{kind}: {'auto' if after == 'auto' else f'{after:g} s'}" for kind in sorted(self.liveness.types)
            if (after := self.liveness.settings.stale_after(kind))))
        self._schedule()

    def on_stop(self):
        for timer in (self._timer, self._loader, self._settler):
            if timer is not None:
                timer.cancel()

    def on_failure(self, exception_type, exception_value, traceback):
        self.on_stop()
        super().on_failure(exception_type, exception_value, traceback)

    def on_receive(self, message):
        if isinstance(message, Seen):
            self._last_pending = time.monotonic()
            if not self._pending:
                self._first_pending = self._last_pending
                self._settler = self.tell_later(SETTLE, Settle())
            self._pending.append((message, self.clock()))
        elif isinstance(message, Settle):
            self._settler = None
            now = time.monotonic()
            if now - self._last_pending < SETTLE and now - self._first_pending < MAX_DEFER:
                self._settler = self.tell_later(SETTLE, Settle())  # still storing: ingestion first
            else:
                self._settled()
        elif isinstance(message, LoadNow):
            self._load()
        elif isinstance(message, CheckNow):
            self._settled()  # what was heard counts before anything is declared stale
            self._timer = self._timer_due = None
            try:  # one connection for the whole check, only when a device looks silent
                changes = self.liveness.due(self.clock(), self._stored)
            finally:
                self.db.close()
            if changes:  # published once stored: a request after the announcement sees the state
                self.peers.tell(WRITER, MarkStale(tuple((c.type, c.device_id, c.received_at) for c in changes),
                                                  self._announcement(changes)))
            self._schedule()
        else:
            log.warning("availability ignored an unexpected message: %r", message)

    def _settled(self) -> None:
        """Take in what the commits stored since the last time: announce new devices and those
        live again."""
        pending, self._pending = self._pending, []
        if self._settler is not None:
            self._settler.cancel()
            self._settler = None
        seen, changes = self.liveness.seen, []
        for message, heard in pending:
            changes += [change for device_id, last_seen, readings in message.devices
                        if (change := seen(message.type, device_id, last_seen, readings, message.received_at, heard))]
        if changes:
            self.peers.tell(LINK, self._announcement(changes))
        if self.liveness.full and not self._said_full:
            self._said_full = True
            log.warning("liveness watches %d devices (devices.max_known): devices new from now on are stored "
                        "and listed in the catalogue, but not watched and get no availability topic",
                        self.liveness.max_known)
        self._schedule()

    def _stored(self, kind: str, device_id: str) -> tuple[str, str] | None:
        """What the catalogue says of a device that looks silent (another instance may have heard it)."""
        try:
            with translated():
                self.db.connect(reuse_if_open=True)
                return (Device.select(Device.last_seen, Device.received_at)
                        .where((Device.type == kind) & (Device.device_id == device_id)).tuples().first())
        except StoreUnavailable as exc:
            log.debug("cannot read the catalogue (%s): deciding on what this instance heard", exc)
            return None

    def _announcement(self, changes: list[Change]) -> Availability:
        """Log the changes (Said); what to publish of them, and to count."""
        said, states, counts = Said(), [], {"new": 0, "went_stale": 0, "live_again": 0}
        for change in changes:
            said.change(change)
            counts["went_stale" if change.state == STALE else "new" if change.was is None else "live_again"] += 1
            if (topic := availability_topic(change.type, change.device_id)) is None:
                log.warning("the availability of %s device %r is not published: its id cannot be an MQTT topic "
                            "level", change.type, change.device_id)
                continue
            states.append((topic, orjson.dumps({"state": change.state, "last_seen": change.last_seen,
                                                "received_at": change.received_at})))
        said.done()
        return Availability(tuple(states), **counts, stale_now=self.liveness.stale_count(), watched=len(self.liveness),
                            by_type=self.liveness.by_type())

    def _schedule(self) -> None:
        due = self.liveness.next_due()
        if due is None or (self._timer_due is not None and self._timer_due <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.tell_later(max(0.0, due - self.clock()) + 0.01, CheckNow())
