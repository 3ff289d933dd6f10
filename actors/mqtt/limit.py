"""The delivery limit at work in the MQTT link: what comes back is recognised (inflight.py's
Deliveries decides why), counted by the writer before it is handled again (Strikes, Struck),
tried alone once it has failed, set aside at the limit, and forgiven once handled (Cleared).
Traffic hands messages on; this decides how, for those that have failed or come back."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from actors.devices import BY_READING_TOPIC
from actors.handling import Mark
from actors.messages import Cleared, Committed, Rejection, Reply, Struck, Strikes, WriteBatch, fingerprint
from actors.models import utc_now
from actors.mqtt.inflight import Deliveries, Held, InFlight, Verdict
from actors.mqtt.outbox import Outbox
from actors.peers import WRITER, Peers
from actors.requests import internal_error
from actors.settings import LimitsSettings

log = logging.getLogger(__name__)
ANSWER_SETTLES = 5.0  # seconds a connection must outlive a failed request's answer to forgive it


class DeliveryLimit:
    def __init__(self, limits: LimitsSettings, died_with: frozenset[int] | None, mark: Mark, inflight: InFlight,
                 peers: Peers, outbox: Outbox, hand_on: Callable[[Held, bool], None],
                 answer: Callable[[int, bytes | dict, bool], None], schedule_flush: Callable[[], None]):
        """`died_with`: what the process or link before this one died handling (Deliveries);
        `mark`: the link's own handling mark (see blame); `hand_on(held, alone)` and
        `answer(ack_id, body, error)`: Traffic's."""
        self.deliveries = Deliveries(limits.max_failures, died_with)
        self.mark = mark
        self.inflight = inflight
        self.peers = peers
        self.hand_on = hand_on
        self.answer = answer
        self.outbox = outbox
        self.max_reading_bytes = limits.max_reading_bytes
        self.schedule_flush = schedule_flush
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
        self.peers.tell(WRITER, WriteBatch(BY_READING_TOPIC[message.topic].name, (), (rejection,), (ack_id,),
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
