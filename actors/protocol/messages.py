"""Messages between actors: small frozen dataclasses of plain values (never peewee rows or
gmqtt objects). Readings travel in batches because each hand-over between threads costs
about as much as parsing a reading."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Inbound:
    """One MQTT message in hand. `ack_id` names its pending acknowledgement in the MQTT link (its
    low 16 bits are the broker's packet id: see actors/runtime/handling.py)."""
    ack_id: int
    topic: str
    payload: bytes
    again: bool = False  # delivered before: retained (on each subscribe), or redelivered (DUP)


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    """MQTT link -> ingest actor: readings of the ingest actor's device type."""
    received_at: str  # UTC
    items: tuple[Inbound, ...]
    alone: bool = False  # a reading that failed before: committed on its own (see WriteBatch)
    forget: tuple[str, ...] = ()  # see WriteBatch


@dataclass(frozen=True, slots=True)
class Rejection:
    """A reading that cannot be stored, kept byte for byte with the reason."""
    topic: str
    payload: bytes
    reason: str
    received_at: str
    again: bool = False  # delivered before (Inbound.again): kept only if its message is not kept already


# How rejections' reasons begin, by class (the stats and metrics count rejections by class): the
# clock check (clock.py), the size limit and a bug while validating (ingest.py), the delivery limit
# (mqtt/limit.py); every other reason is a reading that breaks a field's rule.
REASON_CLASSES = (("clock:", "clock"), ("payload is ", "too_large"), ("internal error while validating", "internal"),
                  ("set aside after ", "set_aside"))


def reason_class(reason: str) -> str:
    """invalid, clock, too_large, internal or set_aside."""
    return next((name for start, name in REASON_CLASSES if reason.startswith(start)), "invalid")


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """Ingest actor -> writer: rows for one device type's table, rejections, and the
    acknowledgements to release once all of it is committed."""
    device: str
    rows: tuple[tuple, ...]
    rejections: tuple[Rejection, ...]
    ack_ids: tuple[int, ...]
    alone: bool = False  # in a transaction of its own, so that a failure names this batch alone
    # fingerprints of readings here that had failed deliveries: their counts are deleted in the
    # transaction that stores them (a death after it cannot leave a count behind)
    forget: tuple[str, ...] = ()
    wrong_clocks: tuple[str, ...] = ()  # device ids, one per rejection for the device's clock


@dataclass(frozen=True, slots=True)
class Committed:
    """Writer -> MQTT link: these messages are durable; acknowledge them to the broker."""
    ack_ids: tuple[int, ...]
    forgotten: tuple[str, ...] = ()  # fingerprints of a Cleared, now deleted


@dataclass(frozen=True, slots=True)
class Request:
    """MQTT link -> query actor: an app asks for a device-day, its latest reading or a summary (on
    its device type's topic), or for the device catalogue."""
    ack_id: int
    topic: str  # the topic it was asked on
    device: str  # the device type, or requests.CATALOGUE
    app_id: str
    payload: bytes
    reply_topic: str  # the app's own reply topic, or the MQTT 5 Response Topic it gave (checked)
    correlation: bytes | None = None  # MQTT 5 Correlation Data, echoed in the reply
    max_bytes: int | None = None  # the largest reply payload the broker takes on that topic


@dataclass(frozen=True, slots=True)
class Reply:
    """Query actor -> MQTT link: publish `payload` as the reply to request `ack_id` (on its reply
    topic, with its correlation data), then acknowledge the request."""
    ack_id: int
    payload: bytes
    error: bool = False  # an error reply (counted in the stats)


@dataclass(frozen=True, slots=True)
class Flush:
    """Writer -> itself: commit what is pending. Queued behind the batches that already
    arrived, so everything that came in meanwhile joins one transaction (group commit)."""


@dataclass(frozen=True, slots=True)
class Prune:
    """Retention actor -> writer (ask): delete rows first_id..last_id of `table`, which the
    retention actor has archived. Answered with Pruned."""
    table: str
    first_id: int
    last_id: int


@dataclass(frozen=True, slots=True)
class Pruned:
    """Writer -> retention actor: the answer to a Prune."""
    deleted: int  # rows
    ms: float  # how long the delete held the write lock


@dataclass(frozen=True, slots=True)
class ChildFailed:
    """A supervised actor -> its supervisor: it crashed and has stopped."""
    name: str
    urn: str
    error: str
    suspects: tuple[int, ...] = ()  # ack ids of the messages it was handling when it crashed


@dataclass(frozen=True, slots=True)
class Restarted:
    """Supervisor -> MQTT link: `name` crashed and runs again; what it held is lost. The link
    hands that on again from its own ledger, and counts a failure against each suspect."""
    name: str
    suspects: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Strikes:
    """MQTT link -> writer: count one more failed delivery of each message (ack id, fingerprint,
    topic, look_up), durably, before it is handled again; with look_up, only tell how many it
    has. Answered with Struck once committed."""
    entries: tuple[tuple[int, str, str, bool], ...]


@dataclass(frozen=True, slots=True)
class Struck:
    """Writer -> MQTT link: (ack id, failed deliveries so far, counted now) of each entry of a
    Strikes (a look_up entry is not counted: 0 if it has no count)."""
    counts: tuple[tuple[int, int, bool], ...]


@dataclass(frozen=True, slots=True)
class Cleared:
    """MQTT link -> writer: these messages (fingerprints) have been handled: forget their failures."""
    fingerprints: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retired:
    """MQTT link -> supervisor: retiring, the instance has handed over all the broker kept for
    it and ended its session; stop the service (exit code 0)."""


@dataclass(frozen=True, slots=True)
class Crash:
    """MQTT link's event loop -> the link actor: the loop failed; crash so we are restarted."""
    error: str


@dataclass(frozen=True, slots=True)
class StatsRequest:
    """MQTT link -> writer: time for a stats report; answer with WriterStats."""


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Writer -> MQTT link: the writer's side of a stats report (counts since start)."""
    stored: tuple[tuple[str, int], ...]  # (device type, readings stored)
    rejected: int
    backlog: int  # rows waiting to be committed
    commit_failures: int
    last_commit_ms: float
    max_commit_ms: float  # since the previous report
    database_bytes: int  # the database file and its WAL
    last_stored_at: tuple[tuple[str, str], ...]  # (device type, UTC time of its latest commit)
    wal_bytes: int  # the write-ahead log alone
    checkpoints: int  # truncating WAL checkpoints done (see readgate.py)
    wrong_clocks: tuple[tuple[str, str, int], ...] = ()  # (device type, device id, clock rejections): the worst
    wrong_clock_totals: tuple[tuple[str, int], ...] = ()  # (device type, clock rejections)
    rejected_by: tuple[tuple[str, str, int], ...] = ()  # (device type, reason class, rejections kept): see reason_class
    commit_seconds: tuple[tuple[int, ...], float] = ((), 0.0)  # commits' durations: a Histogram's snapshot
    commits: int = 0  # transactions committed
    last_checkpoint_at: str | None = None  # UTC, the latest truncating WAL checkpoint


@dataclass(frozen=True, slots=True)
class Seen:
    """Writer -> availability actor: a commit stored readings of these devices of one type."""
    type: str
    devices: tuple[tuple[str, str, int], ...]  # (device_id, its latest timestamp stored now, readings)
    received_at: str  # UTC, the commit's


@dataclass(frozen=True, slots=True)
class MarkStale:
    """Availability actor -> writer: keep these devices' stale state in the catalogue, unless a
    reading was stored since: (type, device_id, received_at of its latest reading); then tell the
    link to publish the announcement."""
    devices: tuple[tuple[str, str, str | None], ...]
    announce: Availability | None = None


@dataclass(frozen=True, slots=True)
class Availability:
    """Availability actor (stale states: writer, once stored) -> MQTT link: publish devices' new
    states, retained, all the changes of one commit or one check in one message; and count them."""
    states: tuple[tuple[str, bytes], ...]  # (topic, payload) of each change that has a topic
    new: int = 0  # devices heard for the first time
    went_stale: int = 0
    live_again: int = 0
    stale_now: int = 0  # devices stale now, for the stats
    watched: int = 0  # devices watched for liveness (at most devices.max_known)
    by_type: tuple[tuple[str, int, int], ...] = ()  # (type, watched, of which stale)


def fingerprint(message: Inbound | Request | Rejection) -> bytes:
    """What identifies a message across deliveries: its topic, payload and, for a request, where
    its reply goes. (Packet ids are reused; a redelivery keeps its content.)"""
    h = hashlib.blake2b(digest_size=16)
    reply = (message.reply_topic.encode(), message.correlation or b"") if isinstance(message, Request) else ()
    for part in (message.topic.encode(), message.payload, *reply):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()
