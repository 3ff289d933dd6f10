"""What the MQTT link holds, and what it knows of messages that failed: pure, no broker, no actors.

`InFlight` is the acknowledgement ledger: every message taken from the broker and not yet
acknowledged, with what is needed to hand it on again if the actor holding it crashes.

`Deliveries` is the delivery limit. Acknowledging only after handling means a message whose
handling fails comes back, again and again; one that was being handled during `max_failures`
failures in a row is set aside instead (a reading into rejected_messages, a request answered
internal_error). A failure counts against the messages it can have been caused by:
- an actor crash: the messages that actor was handling (its suspects), nothing else;
- a process (or MQTT link) that died: the messages its actors were handling at that moment, as
  their handling marks name them (actors/handling.py), when the broker delivers them again (DUP,
  same packet id) on the first connection after it. A kill from outside while the service waits
  (on a commit's fsync, on the network) names nothing and blames nothing; a message that kills
  the process dies marked, every time. A redelivery that is not named is looked up (it may have
  failed before): one with a count is tried alone, so that it never takes others down with it;
- a lost connection: a request that we had answered and that the broker redelivers anyway (our
  reply, or the acknowledgement after it, never made it: the reply may be what the broker
  refused). A reading, or a request not yet answered, never touches the connection, so a lost
  connection (a network blip) is not counted against it.
Counts are kept in the database by the writer (Strikes, Struck, Cleared), so they survive the
restarts they count; a message handled after all is forgiven."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum

from actors.messages import Inbound, Request, fingerprint

ANSWERED_MEMORY = 300.0  # seconds a request's answer is remembered, to recognise its redelivery
ABANDONED_MEMORY = 100_000  # messages given up with lost connections, remembered until they return


@dataclass(slots=True)
class Held:
    """One message in hand."""
    packet_id: int | None  # the broker's packet id; None at QoS 0 (nothing to acknowledge)
    message: Inbound | Request
    route: str  # the actor it was handed to: "ingest/<type>" or "query/<n>"
    fingerprint: bytes | None = None  # set once it has failed before, or came back as a redelivery
    awaiting: str | None = None  # "count" or "look up": waiting for the writer's Struck before going on
    since: float = 0.0  # a request: when it came (time.monotonic), for the reply's latency

    @property
    def is_request(self) -> bool:
        return isinstance(self.message, Request)



class InFlight:
    """ack id -> Held, for every message taken and not yet acknowledged. With `limit` messages in
    hand the link stops reading the socket, and reads again once half of them are released."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held: dict[int, Held] = {}
        self.peak = 0

    def __len__(self) -> int:
        return len(self.held)

    def add(self, ack_id: int, held: Held) -> bool:
        """True when that fills the ledger: time to stop reading."""
        self.held[ack_id] = held
        n = len(self.held)
        if n > self.peak:
            self.peak = n
        return n >= self.limit

    def get(self, ack_id: int) -> Held | None:
        return self.held.get(ack_id)

    def reading_before(self, ack_id: int, route: str | None = None, key: bytes | None = None) -> bool:
        """Whether a reading received before `ack_id` is still in hand (not yet committed), of
        those handed to `route` (None: any) whose raw payload holds `key` (None: any). A payload
        with a JSON escape may spell the key otherwise: it counts. Ack ids grow with arrival and
        the ledger keeps that order, so this looks at the older messages only."""
        for other, held in self.held.items():
            if other >= ack_id:
                return False
            if held.is_request or (route is not None and held.route != route):
                continue
            if key is None or key in (payload := held.message.payload) or b"\\" in payload:
                return True
        return False

    @property
    def full(self) -> bool:
        return len(self.held) >= self.limit

    @property
    def roomy(self) -> bool:
        return len(self.held) <= self.limit // 2

    def release(self, ack_ids) -> list[Held]:
        """Those of `ack_ids` still in hand (the others were given up with a lost connection, or
        answered already: a message handed on twice is acknowledged once)."""
        pop = self.held.pop
        return [h for h in (pop(ack_id, None) for ack_id in ack_ids) if h is not None]

    def abandon(self) -> list[Held]:
        """The connection is gone: nothing in hand can be acknowledged on it any more."""
        held, self.held = list(self.held.values()), {}
        return held


class Verdict(Enum):
    FRESH = "handle it as usual"
    STRIKE = "count a failure against it first"
    LOOK_UP = "delivered again after the process before us died: look up its count first"
    FAILED_BEFORE = "it has failed before: handle it on its own"


class Deliveries:
    """The delivery limit's memory in this process (see the module's docstring). `died_with`:
    the packet ids the process (or link) before this one died handling; None when that cannot be
    told (no handling marks): then every redelivery on the first connection is a suspect."""

    def __init__(self, max_failures: int, died_with: frozenset[int] | None = frozenset(), clock=time.monotonic):
        self.max_failures = max_failures
        self._clock = clock
        self.first_connection = True
        self.died_with = died_with
        self.failures: dict[bytes, int] = {}  # fingerprint -> failed deliveries, as the writer counted
        self._answered: dict[bytes, float] = {}  # fingerprint -> when its reply went out
        self._abandoned: dict[bytes, None] = {}  # in hand at a lost connection: coming back, blameless

    def redelivered(self, fp: bytes, packet_id: int) -> Verdict:
        """A message the broker marked DUP: why has it come back?"""
        if fp in self._answered:
            del self._answered[fp]
            return Verdict.STRIKE  # answered, yet here again: our reply may be what broke the connection
        if fp in self._abandoned:
            del self._abandoned[fp]
            return Verdict.FAILED_BEFORE if fp in self.failures else Verdict.FRESH
        if self.first_connection:  # in hand when the process (or the link) before us died
            if self.died_with is None or packet_id in self.died_with:
                return Verdict.STRIKE  # it was being handled: the death may be its doing
            return Verdict.LOOK_UP
        return Verdict.FRESH  # the broker sent it on the lost connection, but we never read it

    def answered(self, fp: bytes) -> None:
        now = self._clock()
        answered = self._answered
        answered.pop(fp, None)  # to the end: the dict stays in time order
        answered[fp] = now
        while now - answered[oldest := next(iter(answered))] > ANSWERED_MEMORY:
            del answered[oldest]  # the newest is never past it: the loop ends

    def lost(self, held: list[Held]) -> None:
        """The connection is gone with `held` in hand: they come back on the next, blameless."""
        self.first_connection = False
        for h in held:
            if h.packet_id is None:
                continue  # QoS 0: the broker never delivers it again
            if h.fingerprint is None:
                h.fingerprint = fingerprint(h.message)
            self._abandoned[h.fingerprint] = None
        while len(self._abandoned) > ABANDONED_MEMORY:  # those that never came back (session lost)
            del self._abandoned[next(iter(self._abandoned))]

    def counted(self, fp: bytes, failures: int) -> bool:
        """The writer has counted `failures` for it; True if that is the limit: set it aside."""
        self.failures[fp] = failures
        return failures >= self.max_failures

    def exhausted(self, fp: bytes) -> bool:
        return self.failures.get(fp, 0) >= self.max_failures

    def forgive(self, fp: bytes) -> bool:
        """It has been handled (or set aside): True if it had failures for the writer to forget."""
        return self.failures.pop(fp, None) is not None
