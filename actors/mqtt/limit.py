"""The delivery limit. Acknowledging only after handling means a message whose
handling fails comes back, again and again; one that was being handled during `max_failures`
failures in a row is set aside instead (a reading into rejected_messages, a request answered
internal_error). A failure counts against the messages it can have been caused by:
- an actor crash: the messages that actor was handling (its suspects), nothing else;
- a process (or MQTT link) that died: the messages its actors were handling at that moment, as
  their handling marks name them (actors/runtime/handling.py), when the broker delivers them again (DUP,
  same packet id) on the first connection after it. A kill from outside while the service waits
  (on a commit's fsync, on the network) names nothing and blames nothing; a message that kills
  the process dies marked, every time. A redelivery that is not named is looked up (it may have
  failed before): one with a count is tried alone, so that it never takes others down with it;
- a lost connection: a request that we had answered and that the broker redelivers anyway (our
  reply, or the acknowledgement after it, never made it: the reply may be what the broker
  refused). A reading, or a request not yet answered, never touches the connection, so a lost
  connection (a network blip) is not counted against it.
Counts are kept in the database by the writer (Strikes, Struck, Cleared), so they survive the
restarts they count; a message handled after all is forgiven.

In the MQTT link (DeliveryLimit): what comes back is recognised (Deliveries decides why), counted by
the writer before it is handled again (Strikes, Struck), tried alone once it has failed, set aside
at the limit, and forgiven once handled (Cleared). Traffic hands messages on; this decides how, for
those that have failed or come back."""

from __future__ import annotations

import asyncio
import logging
import time
from enum import Enum
from typing import Callable

from actors.mqtt.inflight import Held, InFlight
from actors.mqtt.outbox import Outbox
from actors.protocol.messages import Cleared, Committed, Rejection, Reply, Strikes, Struck, WriteBatch, fingerprint
from actors.protocol.requests import internal_error
from actors.runtime.handling import Mark
from actors.runtime.peers import WRITER, Peers
from actors.runtime.settings import LimitsSettings
from actors.storage.models import utc_now

log = logging.getLogger(__name__)
ANSWER_SETTLES = 5.0  # seconds a connection must outlive a failed request's answer to forgive it
ANSWERED_MEMORY = 300.0  # seconds a request's answer is remembered, to recognise its redelivery
ABANDONED_MEMORY = 100_000  # messages given up with lost connections, remembered until they return


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


class DeliveryLimit:
    def __init__(self, limits: LimitsSettings, died_with: frozenset[int] | None, mark: Mark, inflight: InFlight,
                 peers: Peers, outbox: Outbox, hand_on: Callable[[Held, bool], None],
                 answer: Callable[[int, bytes | dict, bool], None], schedule_flush: Callable[[], None],
                 reading_kinds: dict[str, str]):
        """`died_with`: what the process or link before this one died handling (Deliveries);
        `mark`: the link's own handling mark (see blame); `hand_on(held, alone)` and
        `answer(ack_id, body, error)`: Traffic's; `reading_kinds`: the device type of each reading topic."""
        self.deliveries = Deliveries(limits.max_failures, died_with)
        self.mark = mark
        self.inflight = inflight
        self.peers = peers
        self.hand_on = hand_on
        self.answer = answer
        self.outbox = outbox
        self.max_reading_bytes = limits.max_reading_bytes
        self.schedule_flush = schedule_flush
        self.reading_kinds = reading_kinds
        self.connections = 0  # connections made so far: tells whether one survived an answer
        self._strikes: list[tuple[int, str, str, bool]] = []  # for the writer, sent with the next flush
        self._cleared: list[str] = []
        self._clearing: set[str] = set()  # sent in a Cleared, not yet committed: sent again if the writer dies
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def failed_before(self, held: Held) -> bool:
        return held.fingerprint is not None and held.fingerprint in self.deliveries.failures

    # -- what comes back --------------------------------------------------------------------

    def redelivered(self, ack_id: int, held: Held) -> None:
        """A message the broker marked DUP."""
        held.fingerprint = fingerprint(held.message)
        verdict = self.deliveries.redelivered(held.fingerprint, held.packet_id)
        if verdict is Verdict.STRIKE:
            self.count(ack_id, held)
        elif verdict is Verdict.LOOK_UP:
            self.count(ack_id, held, look_up=True)
        elif verdict is Verdict.FAILED_BEFORE:
            if self.deliveries.exhausted(held.fingerprint):
                self._set_aside(ack_id, held, self.deliveries.failures[held.fingerprint])
            else:
                self.hand_on(held, True)
        else:
            self.hand_on(held, False)

    def count(self, ack_id: int, held: Held, look_up: bool = False) -> None:
        """Have the writer count a failure against it, durably, before it is handled again (with
        `look_up`, only tell how many it has); it waits in hand until then."""
        if held.fingerprint is None:
            held.fingerprint = fingerprint(held.message)
        held.awaiting = "look up" if look_up else "count"
        self._strikes.append((ack_id, held.fingerprint.hex(), held.message.topic, look_up))
        self.schedule_flush()

    def struck(self, counts) -> None:
        for ack_id, failures, counted in counts:
            held = self.inflight.get(ack_id)
            if held is None or held.awaiting is None:
                continue  # given up with a lost connection meanwhile: it comes back
            held.awaiting = None
            if not failures:
                self.hand_on(held, False)  # looked up: it never failed
            elif self.deliveries.counted(held.fingerprint, failures):
                self._set_aside(ack_id, held, failures)
            else:  # alone: if it fails again, it fails on its own
                if counted:
                    log.warning("handing on again, on its own, a %s on %s that was being handled during %d "
                                "failure%s (set aside after %d)", "request" if held.is_request else "reading",
                                held.message.topic, failures, "" if failures == 1 else "s",
                                self.deliveries.max_failures)
                self.hand_on(held, True)

    def blame(self, message) -> None:
        """A bug in the link failed on a message from another actor: mark what it concerns, so
        that the next link counts the failure against it (and only it)."""
        if isinstance(message, Reply):
            self.mark.set((message.ack_id,))
        elif isinstance(message, Committed):
            self.mark.set(message.ack_ids)
        elif isinstance(message, Struck):
            self.mark.set(tuple(entry[0] for entry in message.counts))

    def _set_aside(self, ack_id: int, held: Held, failures: int) -> None:
        """Past the delivery limit: acknowledge it without handling it again."""
        message = held.message
        log.error("set aside a %s on %s after %d failed deliveries, instead of trying it again: payload %r",
                  "request" if held.is_request else "reading", message.topic, failures, message.payload[:1024])
        if held.is_request:
            self.answer(ack_id, internal_error(message.payload, self.outbox.max_request_bytes), True)
            return
        reason = (f"set aside after {failures} failed deliveries: the service failed each time it handled this "
                  "reading (see the log at that time); it is kept here instead of being tried again")
        rejection = Rejection(message.topic, message.payload[:self.max_reading_bytes], reason, utc_now())
        self.peers.tell(WRITER, WriteBatch(self.reading_kinds[message.topic], (), (rejection,), (ack_id,),
                                           alone=True, forget=(held.fingerprint.hex(),)))

    def writer_restarted(self) -> None:
        """The writer crashed: the Strikes and Cleared it had not committed went with it."""
        if self._clearing:
            self._cleared.extend(self._clearing)
            self._clearing.clear()
            self.schedule_flush()
        for ack_id, held in self.inflight.held.items():
            if held.awaiting is not None:
                self.count(ack_id, held, look_up=held.awaiting == "look up")

    # -- what was handled ---------------------------------------------------------------------

    def answered(self, held: Held) -> None:
        if held.fingerprint is None:
            held.fingerprint = fingerprint(held.message)
        self.deliveries.answered(held.fingerprint)

    def released(self, released: list[Held]) -> None:
        """These have been acknowledged: forgive their failures."""
        for h in released:
            if not self.failed_before(h):
                continue
            if h.is_request:  # its answer may be what breaks the connection: see _forgive
                self._loop.call_later(ANSWER_SETTLES, self._forgive, h.fingerprint, self.connections)
            else:  # its count went in the transaction that stored it (WriteBatch.forget)
                self.deliveries.forgive(h.fingerprint)

    def committed(self, forgotten) -> None:
        self._clearing.difference_update(forgotten)

    def _forgive(self, fp: bytes, connection: int) -> None:
        """Forget a handled request's failures, once the connection its answer went out on has
        outlived it by ANSWER_SETTLES: a broker that drops us for the reply never processes the
        acknowledgement after it, and the request comes back."""
        if connection != self.connections or not self.outbox.connected:
            return
        if self.deliveries.forgive(fp):
            self._cleared.append(fp.hex())
            self.schedule_flush()

    # -- the writer's share, and the connection ----------------------------------------------

    def flush(self) -> None:
        if self._strikes:
            strikes, self._strikes = tuple(self._strikes), []
            self.peers.tell(WRITER, Strikes(strikes))
        if self._cleared:
            cleared, self._cleared = tuple(self._cleared), []
            self._clearing.update(cleared)
            self.peers.tell(WRITER, Cleared(cleared))

    def lost(self, held: list[Held]) -> None:
        """The connection is gone with `held` in hand."""
        self.deliveries.lost(held)
        self._strikes.clear()  # counted when they come back, if they are to be
