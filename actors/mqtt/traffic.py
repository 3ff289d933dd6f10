"""The traffic of the MQTT connection: every message in and out, between the broker and the
actors. Messages in are held (inflight.py), routed (routing.py) and handed on (a request once
the readings before it are stored: arrival.py), those that come back as the delivery limit says
(limit.py); messages from the actors are committed
acknowledgements, replies to publish, counts of failed deliveries, and restarted actors whose
messages are handed on again. Nothing goes out that the broker would drop
us for (packets.py). The connection itself, and when it comes and goes, is the session's."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import orjson

from actors.devices import BUILTIN_TYPES, DeviceTypes
from actors.mqtt.arrival import WaitingRequests
from actors.mqtt.client import OneConnectionClient, property_of
from actors.mqtt.handover import HandOver
from actors.mqtt.inflight import Held, InFlight
from actors.mqtt.limit import DeliveryLimit
from actors.mqtt.outbox import Outbox
from actors.mqtt.routing import Refusal, Router
from actors.mqtt.status import StatusReport
from actors.protocol.messages import Availability, Committed, Inbound, ReadingBatch, Reply, Request, Restarted, Struck
from actors.protocol.requests import error_code
from actors.runtime.handling import Mark
from actors.runtime.handling import ack_id as make_ack_id
from actors.runtime.peers import QUERY_POOL, WRITER, Peers
from actors.runtime.settings import AppsSettings, LimitsSettings, MqttSettings
from actors.storage.models import utc_now

log = logging.getLogger(__name__)


class Traffic:
    def __init__(self, settings: MqttSettings, apps: AppsSettings, limits: LimitsSettings, peers: Peers,
                 report: StatusReport, outbox: Outbox, fail: Callable[[Exception, str], None],
                 died_with: frozenset[int] | None = frozenset(), mark: Mark | None = None, linger: float = 0.0,
                 types: DeviceTypes = BUILTIN_TYPES):
        """`fail`: how a bug here is reported (the session fails, and the link is restarted);
        `died_with`: what the process or link before this one died handling (Deliveries); `mark`:
        the link's handling mark, naming the message a bug here failed on (DeliveryLimit.blame)."""
        self.peers = peers
        self.outbox = outbox
        self.report = report
        self.fail = fail
        self.router = Router(apps, settings.shared_group, types=types)
        self._reading_routes = self.router.reading_routes
        self.inflight = InFlight(settings.receive_maximum)  # every message in hand
        self.mark = mark or Mark(None)
        self.limit = DeliveryLimit(limits, died_with, self.mark, self.inflight, peers, outbox, self._dispatch,
                                   self._answer, self._hand_over_soon, self.router.reading_kinds)
        self.drained: asyncio.Event | None = None  # set when nothing is in hand while closing
        self.hand_over = HandOver(peers, linger, self.limit.flush)  # readings, to the ingest actors
        self.waiting = WaitingRequests(self.inflight, self._dispatch, self._hurry, types)  # read after arrival
        self._taking = True

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.limit.start(loop)
        self.waiting.start(loop)
        self.hand_over.start(loop)

    def connected_to(self, client: OneConnectionClient, max_packet: int | None, receive_maximum: int = 65535) -> None:
        self.outbox.connected_to(client, max_packet, receive_maximum)
        self.report.connections += 1
        self.report.connected = True
        self.limit.connections = self.report.connections  # tells whether one outlived an answer

    def stop_taking(self) -> None:
        """Closing: messages that arrive from now on are never acknowledged (the broker keeps them)."""
        self._taking = False
        self.hand_over.now()

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for what is in hand to be committed or answered; how many were not."""
        if self.inflight:
            self.drained = asyncio.Event()
            try:
                await asyncio.wait_for(self.drained.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return len(self.inflight)

    def lost(self) -> None:
        """The connection is gone: nothing in hand can be acknowledged any more. The broker
        delivers it all again on the next connection."""
        self.outbox.lost()
        self.report.connected = False
        self._abandon_all()

    # -- messages in ----------------------------------------------------------------------

    def on_message(self, client, topic, payload, qos, properties, packet_id=None):
        """Every message from the broker; the hot path (a few µs per reading, so it is inline)."""
        try:
            if client is not self.outbox.client or not self._taking:
                return  # shutting down, or a connection we gave up: never acknowledged
            # the process's count, not the link's: an answer from a link that crashed cannot name
            # a message of its successor (the high bits of the ack id: handling.ack_id)
            self.report.received += 1
            ack_id = make_ack_id(self.report.received, packet_id)
            if (route := self._reading_routes.get(topic)) is not None:
                self.report.readings_in[route] += 1
                held = Held(packet_id, Inbound(ack_id, topic, payload, bool(properties.get("retain")
                                                                             or properties.get("dup"))), route)
            elif (request := self._admit(ack_id, topic, payload, properties)) is not None:
                held = Held(packet_id, request, QUERY_POOL, since=time.monotonic())
            else:
                if packet_id is not None:
                    client.acknowledge((packet_id,))  # answered here, or refused: nothing to wait for
                return
            if self.inflight.add(ack_id, held):
                client.pause_reading(True)  # flow control: see OneConnectionClient.pause_reading
            if packet_id is not None and properties.get("dup"):
                self.limit.redelivered(ack_id, held)
            elif route is not None:
                self.hand_over.add(route, held.message)
            elif self.waiting.must_wait(ack_id, request):
                self.waiting.hold(ack_id)
            else:
                self._dispatch(held)
        except Exception as exc:  # noqa: BLE001 - see _fail
            self.mark.set((packet_id or 0,))  # the message this failed on: see DeliveryLimit.blame
            self.fail(exc, "a message from the broker")

    def _dispatch(self, held: Held, alone: bool = False) -> None:
        message = held.message
        if held.is_request:
            held.route = self.peers.tell_pool(QUERY_POOL, message)
            return
        forget = (held.fingerprint.hex(),) if self.limit.failed_before(held) else ()
        if alone:
            self.peers.tell(held.route, ReadingBatch(utc_now(), (message,), alone=True, forget=forget))
        else:
            self.hand_over.add(held.route, message, forget)

    def _hand_over_soon(self) -> None:
        self.hand_over.soon()

    def _hurry(self, on: bool) -> None:
        """A request waits for the readings received before it (`on`): hand them on now, and
        any that come, until no request waits (not `on`)."""
        self.hand_over.hurried = on
        if on:
            self.hand_over.now()

    def _restarted(self, restarted: Restarted) -> None:
        """An actor crashed and runs again: hand on again what it held (a duplicate is harmless:
        the writer ignores a row it has, the link answers a request once), and count a failure
        against each of its suspects."""
        name, suspects = restarted.name, set(restarted.suspects)
        self.report.restarted(name)
        struck = again = 0
        if name == WRITER:
            self.limit.writer_restarted()
        for ack_id, held in list(self.inflight.held.items()):
            if held.awaiting is not None:
                continue  # waiting for its count: handed on once it has it
            if ack_id in suspects:
                self.limit.count(ack_id, held)
                struck += 1
            elif held.route == name or (name == WRITER and not held.is_request):
                self._dispatch(held, alone=self.limit.failed_before(held))
                again += 1
        log.warning("%s was restarted: %d messages it may have held handed on again, %d suspected of the crash",
                    name, again, struck)

    # -- requests -------------------------------------------------------------------------

    def _admit(self, ack_id: int, topic: str, payload: bytes, properties: dict) -> Request | None:
        """The request, to hand to the query pool; or None, refused (and answered) here."""
        admitted = self.router.admit(ack_id, topic, payload, property_of(properties, "response_topic"),
                                     property_of(properties, "correlation_data"), self.outbox.max_packet)
        if isinstance(admitted, Refusal):
            self.outbox.refuse(admitted.reply_topic, payload, admitted.correlation, admitted.code, admitted.message)
            self.report.replied(admitted.kind, admitted.code)
            return None
        return admitted

    # -- messages from the other actors ---------------------------------------------------

    def receive(self, message) -> None:
        """A message from another actor (the session passes them on)."""
        if isinstance(message, Committed):
            self._acknowledge(message.ack_ids)
            self.limit.committed(message.forgotten)
        elif isinstance(message, Reply):
            self._answer(message.ack_id, message.payload, message.error)
        elif isinstance(message, Struck):
            self.limit.struck(message.counts)
        elif isinstance(message, Restarted):
            self._restarted(message)
        elif isinstance(message, Availability):
            self.report.availability_changed(message)
            for topic, payload in message.states:
                self.outbox.keep(topic, payload)
        else:
            log.warning("MQTT link ignored an unexpected message: %r", message)

    def _answer(self, ack_id: int, payload, error: bool) -> None:
        """Publish the reply to a request in hand, then acknowledge the request. A reply to one
        no longer in hand is dropped: it was answered already (handed on twice after a crash),
        or given up with a lost connection (the broker delivers it again)."""
        held = self.inflight.get(ack_id)
        if held is None or not self.outbox.connected:
            return
        request = held.message
        if not isinstance(payload, bytes):
            payload = orjson.dumps(payload)
        if not self.outbox.reply(request.reply_topic, payload, request.correlation, request.payload, error):
            return
        self.limit.answered(held)
        self._acknowledge((ack_id,))
        self.report.replied(request.device, error_code(payload) if error else "ok", time.monotonic() - held.since)

    def _acknowledge(self, ack_ids) -> None:
        """PUBACK the messages behind these ack ids that are still in hand on this connection
        (QoS 0 messages, and those of a connection since lost, have nothing to acknowledge)."""
        released = self.inflight.release(ack_ids)
        packet_ids = [h.packet_id for h in released if h.packet_id is not None]
        if (client := self.outbox.client) is not None:
            if packet_ids:
                client.acknowledge(packet_ids)
            if client.reading_paused and self.inflight.roomy:
                client.pause_reading(False)
        self.limit.released(released)
        if self.waiting:
            self.waiting.release()
        if not self.inflight and self.drained is not None:
            self.drained.set()

    def _abandon_all(self) -> None:
        """The connection is gone: nothing in hand can be acknowledged any more. The broker
        delivers it all again on the next connection."""
        self.limit.lost(self.inflight.abandon())
        self.waiting.clear()
        if self.drained is not None:
            self.drained.set()
