"""The MQTT link: the only actor that talks to the broker.

It runs gmqtt in an asyncio loop on a thread of its own. Every QoS 1 message is acknowledged
only when the rest of the system says so: a reading once the writer has committed it (or its
rejection), a request once its reply has been published. If the connection drops first, the
acknowledgement is never sent and the broker, which keeps our persistent session, delivers the
message again; the unique index makes a second delivery harmless.

Readings are passed to the ingest actors in batches: everything gmqtt parsed from one socket
read goes out as one message per device type, and the acknowledgements of one commit go back to
the broker in one write."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import re
import ssl
import struct
import threading
import time
from typing import Callable

import gmqtt
import orjson
import pykka
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.handler import MqttPackageHandler

from actors import __version__
from actors.devices import DEVICE_TYPES
from actors.inflight import Deliveries, Held, InFlight, Verdict, fingerprint
from actors.messages import (Cleared, Committed, Crash, Inbound, ReadingBatch, Rejection, Reply, Request, Restarted,
                             Retired, StatsRequest, Strikes, Struck, WriteBatch, WriterStats)
from actors.models import utc_now
from actors.notify import notify, watchdog_interval
from actors.packets import publish_size, topic_problem
from actors.peers import Peers, Supervised
from actors.query import error_reply, internal_error, with_request_id
from actors.ratelimit import RateLimiter
from actors.settings import AppsSettings, LimitsSettings, MqttSettings, StatusSettings
from actors.tls import explain, tls_context

log = logging.getLogger(__name__)

# CONNACK refusals that waiting will not fix: bad credentials, not authorized, banned, bad
# client id, unsupported protocol. The link fails; past the restart limit, so does the process.
APP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the last level of a request topic
PERMANENT_REFUSALS = {4, 5, 132, 133, 134, 135, 138, 140}
# Retiring: the broker sends what it kept for the session as fast as acknowledgements free the
# window, so this long with nothing in hand and nothing arriving means it has all been handed over.
HANDED_OVER_AFTER = 3.0
READ_AFTER_ARRIVAL_WAIT = 1.0  # longest a request waits for the readings received before it
ANSWER_SETTLES = 5.0  # seconds a connection must outlive a failed request's answer to forgive it


class Backoff:
    """Capped exponential backoff with jitter, so a fleet does not reconnect in lockstep."""

    def __init__(self, first: float, cap: float):
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.cap)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._next = self.first


class AckLaterHandler(MqttPackageHandler):
    """gmqtt's packet handler, changed in one respect: a QoS 1 PUBLISH goes to on_message at once,
    with its packet id, and no PUBACK is sent; the session sends it after the commit.

    gmqtt's own way to delay a PUBACK (optimistic_acknowledgement=False) runs an asyncio task per
    message and writes each PUBACK to the socket on its own: measured, that was most of the
    service's CPU per reading (32 µs against 15 µs for a subscriber that acknowledges on receipt)."""

    def _handle_qos_1_publish_packet(self, mid, packet, print_topic, properties):
        self.on_message(print_topic, packet, 1, properties, mid)


PUBACK = struct.Struct("!BBH")  # MQTT 5 PUBACK, success: reason code and properties omitted


class OneConnectionClient(gmqtt.Client):
    """A gmqtt client for a single connection, which acknowledges QoS 1 messages when told to.

    On a loss gmqtt would reconnect by itself every 6 s, reusing a packet-id pool that leaks ids
    across sessions until subscribe() fails; the session makes a fresh client for each connection
    instead, with its own backoff. gmqtt (pinned in requirements.txt) offers neither late
    acknowledgements without a task per message nor flow control: this class is the one place
    that reaches into it for them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._package_handler.__class__ = AckLaterHandler

    async def reconnect(self, delay=False):
        pass  # the session notices the loss through on_disconnect and reconnects

    def acknowledge(self, packet_ids) -> None:
        """PUBACK these QoS 1 messages, all in one write."""
        connection = self._package_handler.current_connection
        if connection is not None and not connection.is_closing():
            connection.send_package(b"".join(PUBACK.pack(0x40, 2, mid) for mid in packet_ids))

    async def end_session(self, timeout: float) -> bool:
        """DISCONNECT with Session Expiry 0, so that the broker discards our session; True once
        the broker has closed the connection. Closing it ourselves at once is not enough: a
        packet of the broker's still on its way (a PUBACK) meets a closed socket, the reset
        discards the DISCONNECT unread, and the session and the will survive (measured with
        Mosquitto 2.0.11)."""
        self._is_active = False
        connection = self._connection
        connection.send_disconnect(session_expiry_interval=0)
        try:
            await asyncio.wait_for(asyncio.shield(connection._protocol.closed), timeout)
            return True
        except (asyncio.TimeoutError, ConnectionError):
            return False
        finally:
            await connection.close()

    def pause_reading(self, pause: bool) -> None:
        """Stop (or resume) reading from the socket; TCP then pushes back on the broker."""
        connection = self._package_handler.current_connection
        transport = getattr(connection, "_transport", None)
        if transport is not None and not transport.is_closing():
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()


class Session:
    """Lives in the asyncio loop: the gmqtt client, and the acknowledgements it owes."""

    def __init__(self, settings: MqttSettings, status: StatusSettings, peers: Peers, apps: AppsSettings,
                 limits: LimitsSettings, on_retired: Callable[[], None] | None = None):
        """With `on_retired`, retire this instance instead of serving: see _hand_over."""
        self.settings = settings
        self.on_retired = on_retired
        self.status_settings = status
        self.peers = peers
        self.status_topic = f"home/status/{settings.client_id}"
        self.stats_topic = f"home/stats/{settings.client_id}"
        self.started_at = utc_now()
        self._answered = self._error_replies = 0
        self._next_log = time.monotonic() + status.log_interval
        self._next_stats = time.monotonic() + status.stats_interval
        # The writer answers a stats request only when it is making progress; under systemd the
        # watchdog is fed with each answer, so a stuck writer gets the process restarted.
        self._watchdog = watchdog_interval()
        self._ready = False
        self.backoff = Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay)
        self.client: OneConnectionClient | None = None
        self.connected = False
        self.max_packet = None  # the broker's Maximum Packet Size, if it has one
        self.inflight = InFlight(settings.receive_maximum)  # every message in hand
        self.deliveries = Deliveries(limits.max_failures)  # the delivery limit (see inflight.py)
        self.max_reading_bytes = limits.max_reading_bytes
        self.max_request_bytes = limits.max_request_bytes
        self._strikes: list[tuple[int, str, str, bool]] = []  # for the writer, sent with the next flush
        self._cleared: list[str] = []
        self._clearing: set[str] = set()  # sent in a Cleared, not yet committed: sent again if the writer dies
        self._connections = 0  # connections made so far: tells whether one survived an answer
        self._reading_paused = False  # see _hold_back
        self._drained: asyncio.Event | None = None  # set when nothing is in hand while closing
        self._received = 0  # messages taken so far; the last one's ack id
        self._readings: dict[str, list[Inbound]] = {}
        # Requests held back until the readings received before them are committed (read after
        # arrival), oldest first; each waits at most READ_AFTER_ARRIVAL_WAIT.
        self._waiting: collections.deque[int] = collections.deque()
        self._flush_scheduled = False
        self._taking = True
        self._closing = False
        self._lost = asyncio.Event()  # the current connection is gone (or must go: retiring, failing)
        self._failure: Exception | None = None  # a bug in the link itself: see _fail
        self._lost_at: float | None = None
        self._reading_routes = {d.reading_topic: f"ingest/{d.name}" for d in DEVICE_TYPES.values()}
        self._request_stems = {d.request_stem: d.name for d in DEVICE_TYPES.values()}
        self._topics = [*self._reading_routes, *(f"{stem}/+" for stem in self._request_stems)]
        if settings.shared_group:  # several instances share the work: each message goes to one
            self._topics = [f"$share/{settings.shared_group}/{t}" for t in self._topics]
        self._tls = tls_context(settings)
        self._limiter = RateLimiter(apps.rate, apps.burst)
        self._limited: set[str] = set()  # apps over their rate now: logged once per episode
        self._handing_over: asyncio.Task | None = None

    # -- connection ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set: connect, wait for a loss, back off, again."""
        self._loop = asyncio.get_running_loop()
        self._stop = stop
        self._ask_for_stats()
        while await self._connect():
            await _first_of(stop, self._lost)
            if self._failure is not None:
                raise self._failure
            if stop.is_set():
                break
            client, self.client = self.client, None
            self.connected = False
            self._abandon_all()
            await self._discard(client)
            self._lost.clear()
            await self._pause(self.backoff.next())
        await self.close()

    async def _connect(self) -> bool:
        """Connect a fresh client, retrying with backoff until the broker accepts us;
        False if we are told to stop first."""
        s = self.settings
        failing = False
        while not self._stop.is_set():
            client = self._new_client()
            self.client = client
            try:
                await asyncio.wait_for(client.connect(s.host, s.port, ssl=self._tls or False, keepalive=s.keepalive,
                                                      version=MQTTv50), s.connect_timeout)
                return True
            except gmqtt.MQTTConnectError as exc:
                if exc.args and exc.args[0] in PERMANENT_REFUSALS:
                    raise RuntimeError(f"the broker at {s.host}:{s.port} refused us: {exc}") from None
                reason = str(exc)
            except ssl.SSLError as exc:  # retried too: a certificate may be renewed meanwhile
                reason = explain(exc, s)
            except (OSError, asyncio.TimeoutError) as exc:
                reason = str(exc) or "no answer"
            if not failing:
                log.warning("cannot connect to the MQTT broker at %s:%s (%s); retrying with backoff",
                            s.host, s.port, reason)
                failing = True
            else:
                log.debug("connection attempt failed again: %s", reason)
            self.client = None
            await self._discard(client)
            await self._pause(self.backoff.next())
        return False

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up at once when told to stop."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _new_client(self) -> OneConnectionClient:
        s = self.settings
        # The broker announces us offline if we vanish without saying goodbye.
        will = gmqtt.Message(self.status_topic, self._status("offline", "connection lost"), qos=1, retain=True)
        client = OneConnectionClient(s.client_id, clean_session=False, session_expiry_interval=s.session_expiry,
                                     receive_maximum=s.receive_maximum, will_message=will)
        if s.username:
            client.set_auth_credentials(s.username, s.password or None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        return client

    async def _discard(self, client: OneConnectionClient) -> None:
        try:
            await client.disconnect()
        except Exception:  # noqa: BLE001 - the connection is already gone; nothing to clean up
            pass

    def _on_connect(self, client, session_present, result, properties):
        self.connected = True
        self._connections += 1
        self.backoff.reset()
        self.max_packet = (properties.get("maximum_packet_size") or [None])[0]
        s = self.settings
        session = "resumed" if session_present else "new"
        if self._lost_at is None:
            log.info("connected to the MQTT broker at %s:%s%s as %s (session %s)", s.host, s.port,
                     " over TLS" if self._tls else "", s.client_id, session)
        else:
            log.warning("reconnected to the MQTT broker after %.1f s (session %s)",
                        time.monotonic() - self._lost_at, session)
            self._lost_at = None
        if self.on_retired is not None:
            client.unsubscribe(self._topics)
            self._send(self.status_topic, self._status("retiring"), qos=1, retain=True)
            return
        # gmqtt never resubscribes. Subscribing again is harmless when the session survived,
        # and essential when the broker had no session for us.
        client.subscribe([gmqtt.Subscription(t, qos=1) for t in self._topics])
        self._send(self.status_topic, self._status("online"), qos=1, retain=True)

    def _on_subscribe(self, client, mid, granted, properties):
        refused = [t for t, code in zip(self._topics, granted) if code >= 0x80]
        if refused:
            log.error("the broker refused our subscription to %s (check its ACL)", ", ".join(refused))
        else:
            log.info("subscribed to %d topics; taking readings and requests", len(granted))
            if not self._ready:  # the database is open (the writer started first) and we listen
                self._ready = True
                notify("READY=1")

    def _on_unsubscribe(self, client, mid, granted):
        if self._handing_over is None:
            log.info("retiring: unsubscribed (no new readings or requests come to this instance); "
                     "storing and answering what the broker kept for it")
            self._handing_over = self._loop.create_task(self._hand_over())

    async def _hand_over(self) -> None:
        """Retire this instance for good: once the broker has handed over all it kept for the
        session (delivered even after unsubscribing) and all of it is committed or answered,
        end the session (Session Expiry 0), so that the broker stops keeping a share of new
        messages for an instance that will not come back, and clear its retained status."""
        seen, quiet_since = self._received, time.monotonic()
        while time.monotonic() - quiet_since < HANDED_OVER_AFTER:
            await asyncio.sleep(0.1)
            if self._received != seen or self.inflight or not self.connected:
                seen, quiet_since = self._received, time.monotonic()
        for topic in (self.status_topic, self.stats_topic):
            self._send(topic, b"", qos=1, retain=True)  # an empty retained message deletes it
        client, self.client, self.connected = self.client, None, False
        if await client.end_session(self.settings.connect_timeout):
            log.info("retired: %d messages the broker kept for %s stored or answered, and its session "
                     "ended; this instance may be removed", self._received, self.settings.client_id)
            self.on_retired()
            return
        log.warning("the broker did not confirm the end of the session; trying again")
        self._handing_over = None
        self._lost.set()  # reconnect, resume the session, hand over again

    def _on_disconnect(self, client, packet, exc=None):
        if client is not self.client or not self.connected or self._lost.is_set() or self._closing:
            # A client we discarded ourselves, or an attempt that never got its CONNACK: the
            # connect loop deals with that one (its timeout), it is not a lost connection.
            return
        self.connected = False
        self._lost_at = time.monotonic()
        log.warning("lost the MQTT broker connection; reconnecting with backoff "
                    "(unacknowledged messages will be delivered again)")
        self._lost.set()

    async def close(self) -> None:
        """Stop taking messages, give what is in hand time to be committed and acknowledged,
        then disconnect. Messages that arrive meanwhile are never acknowledged: the broker
        keeps them for our next start."""
        self._closing = True
        self._taking = False
        self._flush()
        if self.inflight:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), self.settings.drain_timeout)
            except asyncio.TimeoutError:
                log.warning("%d messages were not committed in time; the broker will deliver "
                            "them again", len(self.inflight))
        if self.client is not None:
            if self.connected:  # a clean DISCONNECT cancels the last will: say it ourselves
                self._send(self.status_topic, self._status("offline", "stopped"), qos=1, retain=True)
            await self._discard(self.client)
        self._abandon_all()
        log.info("disconnected from the MQTT broker (at most %d messages were in hand at once)",
                 self.inflight.peak)

    # -- messages in ----------------------------------------------------------------------

    def _on_message(self, client, topic, payload, qos, properties, packet_id=None):
        """Every message from the broker; the hot path (a few µs per reading, so it is inline)."""
        try:
            if client is not self.client or not self._taking:
                return  # shutting down, or a connection we gave up: never acknowledged
            self._received += 1
            ack_id = self._received
            if (route := self._reading_routes.get(topic)) is not None:
                held = Held(packet_id, Inbound(ack_id, topic, payload), route)
            elif (request := self._admit(ack_id, topic, payload, properties)) is not None:
                held = Held(packet_id, request, "query")
            else:
                if packet_id is not None:
                    client.acknowledge((packet_id,))  # answered here, or refused: nothing to wait for
                return
            if self.inflight.add(ack_id, held):
                self._hold_back(True)  # again each time: asyncio's StreamReader may have resumed it
            if packet_id is not None and properties.get("dup"):
                self._redelivered(ack_id, held)
            elif route is not None:  # readings of one socket read travel together, a batch per type
                self._readings.setdefault(route, []).append(held.message)
                if not self._flush_scheduled:
                    self._flush_scheduled = True
                    self._loop.call_soon(self._flush)
            elif self.inflight.reading_before(ack_id):
                self._hold_request(ack_id)
            else:
                self._dispatch(held)
        except Exception as exc:  # noqa: BLE001 - see _fail
            self._fail(exc, "a message from the broker")

    def _hold_request(self, ack_id: int) -> None:
        """Read after arrival: a request is answered with every reading received before it, so it
        waits until those are committed (a few ms: the writer's next commit). While the database
        cannot be written (locked, full), it waits READ_AFTER_ARRIVAL_WAIT at most, then is
        answered from what is stored."""
        self._waiting.append(ack_id)
        self._loop.call_later(READ_AFTER_ARRIVAL_WAIT, self._release_requests, ack_id)

    def _release_requests(self, overdue: int = 0) -> None:
        """Hand on the waiting requests that no earlier reading holds up (and those up to
        `overdue`, which have waited long enough)."""
        waiting = self._waiting
        while waiting:
            ack_id = waiting[0]
            held = self.inflight.get(ack_id)
            if held is not None and ack_id > overdue and self.inflight.reading_before(ack_id):
                return
            waiting.popleft()
            if held is not None:  # else given up with a lost connection: it comes back
                self._dispatch(held)

    def _dispatch(self, held: Held, alone: bool = False) -> None:
        message = held.message
        if held.is_request:
            held.route = self.peers.tell_pool("query", message)
        elif alone:
            self.peers.tell(held.route, ReadingBatch(utc_now(), (message,), alone=True))
        else:  # readings of one socket read travel together, one batch per device type
            self._readings.setdefault(held.route, []).append(message)
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    # -- the delivery limit (see inflight.py) ------------------------------------------------

    def _redelivered(self, ack_id: int, held: Held) -> None:
        held.fingerprint = fingerprint(held.message)
        verdict = self.deliveries.redelivered(held.fingerprint)
        if verdict is Verdict.STRIKE:
            self._count(ack_id, held)
        elif verdict is Verdict.SUSPECT:
            self._count(ack_id, held, fresh_only=True)
        elif verdict is Verdict.FAILED_BEFORE:
            if self.deliveries.exhausted(held.fingerprint):
                self._set_aside(ack_id, held, self.deliveries.failures[held.fingerprint])
            else:
                self._dispatch(held, alone=True)
        else:
            self._dispatch(held)

    def _count(self, ack_id: int, held: Held, fresh_only: bool = False) -> None:
        """Have the writer count a failure against it, durably, before it is handled again (with
        `fresh_only`, only if it has none yet); it waits in hand until then."""
        if held.fingerprint is None:
            held.fingerprint = fingerprint(held.message)
        held.awaiting = "check" if fresh_only else "count"
        self._strikes.append((ack_id, held.fingerprint.hex(), held.message.topic, fresh_only))
        self._schedule_flush()

    def _struck(self, counts) -> None:
        for ack_id, failures, counted in counts:
            held = self.inflight.get(ack_id)
            if held is None or held.awaiting is None:
                continue  # given up with a lost connection meanwhile: it comes back
            fresh, held.awaiting = held.awaiting == "check", None
            if self.deliveries.counted(held.fingerprint, failures):
                self._set_aside(ack_id, held, failures)
            elif not counted:
                # In hand when earlier processes died, and not counted yet in this one: tried
                # alone, one at a time, so that it is blamed only for a failure while it is tried.
                self.deliveries.wait_turn(ack_id)
            elif fresh:
                self._dispatch(held)  # redelivered after one death: tried with the others
            else:
                log.warning("handing on again, on its own, a %s on %s that was in hand during %d failure%s "
                            "(set aside after %d)", "request" if held.is_request else "reading",
                            held.message.topic, failures, "" if failures == 1 else "s", self.deliveries.max_failures)
                self._dispatch(held, alone=True)
        self._next_turn()

    def _next_turn(self) -> None:
        ack_id = self.deliveries.next_turn(self.inflight.held)
        if ack_id is not None:
            self._count(ack_id, self.inflight.get(ack_id))

    def _set_aside(self, ack_id: int, held: Held, failures: int) -> None:
        """Past the delivery limit: acknowledge it without handling it again."""
        message = held.message
        log.error("set aside a %s on %s after %d failed deliveries, instead of trying it again: payload %r",
                  "request" if held.is_request else "reading", message.topic, failures, message.payload[:1024])
        if held.is_request:
            self._answer(ack_id, internal_error(message.payload, self.max_request_bytes), error=True)
            return
        reason = (f"set aside after {failures} failed deliveries: the service failed each time it handled this "
                  "reading (see the log at that time); it is kept here instead of being tried again")
        rejection = Rejection(message.topic, message.payload[:self.max_reading_bytes], reason, utc_now())
        self.peers.tell("writer", WriteBatch(held.route.partition("/")[2], (), (rejection,), (ack_id,), alone=True))

    def _restarted(self, restarted: Restarted) -> None:
        """An actor crashed and runs again: hand on again what it held (a duplicate is harmless:
        the writer ignores a row it has, the link answers a request once), and count a failure
        against each of its suspects."""
        name, suspects = restarted.name, set(restarted.suspects)
        struck = again = 0
        if name == "writer" and self._clearing:  # its Cleared went with it
            self._cleared.extend(self._clearing)
            self._clearing.clear()
            self._schedule_flush()
        for ack_id, held in list(self.inflight.held.items()):
            if held.awaiting is not None:
                if name == "writer":  # the Strikes it had not committed yet went with it
                    self._count(ack_id, held, fresh_only=held.awaiting == "check")
            elif ack_id in suspects:
                self._count(ack_id, held)
                struck += 1
            elif self.deliveries.waiting(ack_id):
                continue  # not handed on yet: its turn comes
            elif held.route == name or (name == "writer" and not held.is_request):
                self._dispatch(held, alone=held.fingerprint in self.deliveries.failures)
                again += 1
        log.warning("%s was restarted: %d messages it may have held handed on again, %d suspected of the crash",
                    name, again, struck)

    # -- requests -------------------------------------------------------------------------

    def _admit(self, ack_id: int, topic: str, payload: bytes, properties: dict) -> Request | None:
        """The request, to hand to the query pool; or None, refused (and answered) here."""
        stem, _, app_id = topic.rpartition("/")
        device = self._request_stems.get(stem)
        if device is None:
            log.warning("ignored a message on unexpected topic %r", topic)
            return None
        if not APP_ID.fullmatch(app_id):  # its reply topic would not be a plain name of one app
            log.warning("ignored a request on %r: an app id is 1-64 letters, digits, '_' or '-'", topic)
            return None
        reply_topic = f"{DEVICE_TYPES[device].reply_stem}/{app_id}"
        correlation = _property(properties, "correlation_data")
        if not isinstance(correlation, (bytes, type(None))):
            correlation = None
        asked = _property(properties, "response_topic")
        if asked is not None:  # MQTT 5 request/response: only inside this app's own reply topics
            if (problem := self._response_topic_problem(asked, app_id)) is not None:
                log.warning("refused a request on %r: its response topic %r %s", topic, asked, problem)
                self._refuse(reply_topic, payload, correlation, "invalid_response_topic",
                             f"the Response Topic {problem}")
                return None
            reply_topic = asked
        if not self._within_rate(app_id):
            self._refuse(reply_topic, payload, correlation, "rate_limited",
                         f"more than {self._limiter.rate:g} requests per second (bursts of "
                         f"{self._limiter.burst}); slow down")
            return None
        # The largest reply payload the broker takes on that topic, with that correlation data.
        room = self.max_packet - publish_size(reply_topic, b"", 0, correlation) if self.max_packet else None
        return Request(ack_id, device, app_id, payload, reply_topic, correlation, room)

    @staticmethod
    def _response_topic_problem(asked, app_id: str) -> str | None:
        if isinstance(asked, str) and not any(asked == f"{d.reply_stem}/{app_id}"
                                              or asked.startswith(f"{d.reply_stem}/{app_id}/")
                                              for d in DEVICE_TYPES.values()):
            return f"is not one of app {app_id}'s reply topics (home/data<type>/{app_id}[/...])"
        return topic_problem(asked)

    def _refuse(self, reply_topic: str, payload: bytes, correlation: bytes | None, code: str, message: str) -> None:
        body = with_request_id(error_reply(code, message), payload, self.max_request_bytes)
        self._reply(reply_topic, orjson.dumps(body), correlation)
        self._error_replies += 1

    def _within_rate(self, app_id: str) -> bool:
        if self._limiter.allow(app_id):
            if app_id in self._limited:
                self._limited.discard(app_id)
                log.info("app %s is within its request rate again", app_id)
            return True
        if app_id not in self._limited:
            self._limited.add(app_id)
            log.warning("app %s asks more than %g requests/s: its requests get rate_limited replies",
                        app_id, self._limiter.rate)
        return False

    def _hold_back(self, pause: bool) -> None:
        """Mosquitto 2.0.11 keeps sending past our Receive Maximum once acknowledgements flow
        (measured: 41,500 messages in hand with 1000 allowed, while commits were slow). So the
        link enforces it: with receive_maximum messages in hand it stops reading the socket, TCP
        pushes back, and the broker queues the rest. What asyncio had already read still comes
        through, so the bound is receive_maximum messages plus 384 KiB of socket data."""
        if pause and not self._reading_paused:
            log.debug("holding back: %d messages in hand", len(self.inflight))
        if self.client is not None:
            self.client.pause_reading(pause)
        self._reading_paused = pause

    def _flush(self) -> None:
        self._flush_scheduled = False
        readings, self._readings = self._readings, {}
        received_at = utc_now()
        for route, items in readings.items():
            self.peers.tell(route, ReadingBatch(received_at, tuple(items)))
        if self._strikes:
            strikes, self._strikes = tuple(self._strikes), []
            self.peers.tell("writer", Strikes(strikes))
        if self._cleared:
            cleared, self._cleared = tuple(self._cleared), []
            self._clearing.update(cleared)
            self.peers.tell("writer", Cleared(cleared))

    # -- messages from the other actors ---------------------------------------------------

    def _fail(self, exc: Exception, what: str) -> None:
        """A bug while handling a message must not leave it in hand for ever, unanswered: the link
        fails instead, and is restarted; the broker then delivers what it held again, and the
        delivery limit counts the failure against each of them."""
        log.error("the MQTT link failed while handling %s", what, exc_info=exc)
        if self._failure is None:
            self._failure = exc
            self._lost.set()

    def receive(self, message) -> None:
        """Every message from the other actors (through LoopHandle)."""
        try:
            self._receive(message)
        except Exception as exc:  # noqa: BLE001 - see _fail
            self._fail(exc, type(message).__name__)

    def _receive(self, message) -> None:
        if isinstance(message, Committed):
            self._acknowledge(message.ack_ids)
            self._clearing.difference_update(message.forgotten)
        elif isinstance(message, Reply):
            self._answer(message.ack_id, message.payload, message.error)
        elif isinstance(message, Struck):
            self._struck(message.counts)
        elif isinstance(message, Restarted):
            self._restarted(message)
        elif isinstance(message, WriterStats):
            self._report(message)
        else:
            log.warning("MQTT link ignored an unexpected message: %r", message)

    def _answer(self, ack_id: int, payload, error: bool) -> None:
        """Publish the reply to a request in hand, then acknowledge the request. A reply to one
        no longer in hand is dropped: it was answered already (handed on twice after a crash),
        or given up with a lost connection (the broker delivers it again)."""
        held = self.inflight.get(ack_id)
        if held is None or not self.connected:
            return
        request = held.message
        if not isinstance(payload, bytes):
            payload = orjson.dumps(payload)
        if not self._reply(request.reply_topic, payload, request.correlation, request.payload, error):
            return
        if held.fingerprint is None:
            held.fingerprint = fingerprint(request)
        self.deliveries.answered(held.fingerprint)
        self._acknowledge((ack_id,))
        self._answered += 1
        self._error_replies += error

    def _reply(self, topic: str, payload: bytes, correlation: bytes | None, request: bytes = b"",
               error: bool = True) -> bool:
        """Publish a reply within the broker's maximum packet size: one that would not fit becomes
        a too_large error; an error goes without the correlation data if it only fits that way."""
        if correlation is not None and error and not self._fits(topic, payload, correlation) \
                and self._fits(topic, payload):
            log.error("the request's correlation data (%d bytes) leaves no room for the reply; sent without it",
                      len(correlation))
            correlation = None
        if not self._fits(topic, payload, correlation):
            log.error("a reply of %d bytes on %s would exceed the broker's maximum packet size (%d bytes); "
                      "answered too_large", len(payload), topic, self.max_packet)
            body = with_request_id(error_reply("too_large", "the reply would exceed the broker's maximum packet size"),
                                   request, self.max_request_bytes)
            payload = orjson.dumps(body)
            if not self._fits(topic, payload, correlation):
                log.error("the request's correlation data (%d bytes) is too large to send back", len(correlation or b""))
                correlation = None
        # QoS 0: an answer is only useful to an app that is connected now; an app that missed
        # it asks again. QoS 0 also keeps replies clear of gmqtt's packet-id limits.
        return self._send(topic, payload, correlation=correlation)

    def _fits(self, topic: str, payload: bytes, correlation: bytes | None = None, qos: int = 0) -> bool:
        return not self.max_packet or publish_size(topic, payload, qos, correlation) <= self.max_packet

    def _send(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
              correlation: bytes | None = None) -> bool:
        """The one way out to the broker: nothing that would get us disconnected is published."""
        if not self.connected:
            return False  # a request stays unacknowledged: the broker delivers it again
        if not self._fits(topic, payload, correlation, qos):
            log.error("not publishing %d bytes on %s: over the broker's maximum packet size (%d bytes)",
                      len(payload), topic, self.max_packet)
            return True  # dropping it is all we can do; waiting would not make it fit
        extra = {} if correlation is None else {"correlation_data": correlation}
        self.client.publish(topic, payload, qos=qos, retain=retain, **extra)
        return True

    # -- status and stats -------------------------------------------------------------------

    def _status(self, state: str, reason: str | None = None) -> bytes:
        status = {"state": state, "client_id": self.settings.client_id, "version": __version__,
                  "started_at": self.started_at}
        return orjson.dumps(status if reason is None else {**status, "reason": reason})

    def _ask_for_stats(self) -> None:
        self.peers.tell("writer", StatsRequest())  # the writer answers with WriterStats
        every = self.status_settings.stats_interval
        self._loop.call_later(min(every, self._watchdog or every), self._ask_for_stats)

    def _report(self, writer: WriterStats) -> None:
        if self._watchdog:
            notify("WATCHDOG=1")
        if time.monotonic() < self._next_stats:
            return
        self._next_stats = time.monotonic() + self.status_settings.stats_interval
        stats = {"time": utc_now(), "version": __version__, "started_at": self.started_at,
                 "connected": self.connected, "stored": dict(writer.stored), "rejected": writer.rejected,
                 "requests": {"answered": self._answered, "errors": self._error_replies},
                 "commit_failures": writer.commit_failures, "writer_backlog": writer.backlog,
                 "in_hand": len(self.inflight),
                 "commit_ms": {"last": writer.last_commit_ms, "max": writer.max_commit_ms},
                 "database_bytes": writer.database_bytes, "wal_bytes": writer.wal_bytes,
                 "wal_checkpoints": writer.checkpoints, "last_stored_at": dict(writer.last_stored_at)}
        self._send(self.stats_topic, orjson.dumps(stats), retain=True)
        if time.monotonic() >= self._next_log:
            self._next_log = time.monotonic() + self.status_settings.log_interval
            log.info("stats: stored %s; rejected %d; requests %d (%d errors); commit failures %d; "
                     "backlog %d rows; commit %.1f ms (max %.1f); database %.1f MiB (WAL %.1f MiB)",
                     ", ".join(f"{k} {v}" for k, v in writer.stored), writer.rejected, self._answered,
                     self._error_replies, writer.commit_failures, writer.backlog, writer.last_commit_ms,
                     writer.max_commit_ms, writer.database_bytes / 2**20, writer.wal_bytes / 2**20)

    def _acknowledge(self, ack_ids) -> None:
        """PUBACK the messages behind these ack ids that are still in hand on this connection
        (QoS 0 messages, and those of a connection since lost, have nothing to acknowledge)."""
        released = self.inflight.release(ack_ids)
        packet_ids = [h.packet_id for h in released if h.packet_id is not None]
        if packet_ids and self.client is not None:
            self.client.acknowledge(packet_ids)
        for h in released:
            if h.fingerprint is None or h.fingerprint not in self.deliveries.failures:
                continue
            if h.is_request:  # its answer may be what breaks the connection: see _forgive
                self._loop.call_later(ANSWER_SETTLES, self._forgive, h.fingerprint, self._connections)
            else:
                self._forgive(h.fingerprint)
        if self.deliveries.trying is not None and self.deliveries.trying not in self.inflight.held:
            self._next_turn()  # the one tried alone is done: the next one's turn
        if self._waiting:
            self._release_requests()
        if self._reading_paused and self.inflight.roomy:
            self._hold_back(False)
        if not self.inflight and self._drained is not None:
            self._drained.set()

    def _forgive(self, fp: bytes, connection: int | None = None) -> None:
        """Forget a handled message's failures. A request counts as handled only once the
        connection its answer went out on has outlived it by ANSWER_SETTLES: a broker that drops
        us for the reply never processes the acknowledgement after it, and the request comes back."""
        if connection is not None and (connection != self._connections or not self.connected):
            return
        if self.deliveries.forgive(fp):
            self._cleared.append(fp.hex())
            self._schedule_flush()

    def _abandon_all(self) -> None:
        """The connection is gone: nothing in hand can be acknowledged any more. The broker
        delivers it all again on the next connection."""
        self.deliveries.lost(self.inflight.abandon())
        self._waiting.clear()
        self._strikes.clear()  # counted when they come back, if they are to be
        self._reading_paused = False  # the next connection starts reading
        if self._drained is not None:
            self._drained.set()


class LoopHandle:
    """How the writer and the query actors reach the session: straight into its event loop,
    so acknowledgements keep flowing while the link's actor thread is busy stopping."""

    def __init__(self, loop: asyncio.AbstractEventLoop, session: Session):
        self._loop = loop
        self._session = session

    def tell(self, message) -> None:
        try:
            self._loop.call_soon_threadsafe(self._session.receive, message)
        except RuntimeError:  # the loop has closed
            raise pykka.ActorDeadError("the MQTT link has stopped") from None


class MqttLink(Supervised):
    def __init__(self, settings: MqttSettings, status: StatusSettings, apps: AppsSettings, limits: LimitsSettings,
                 peers: Peers, supervisor=None, retire: bool = False):
        super().__init__("link", supervisor)
        self.retire = retire
        self.settings = settings
        self.apps = apps
        self.limits = limits
        self.status_settings = status
        self.peers = peers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._session: Session | None = None

    def on_start(self):
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="mqtt-link")
        self._thread.start()
        ready.wait()
        if self._session is None:
            raise RuntimeError("the MQTT link's event loop did not start")

    def address(self):
        return LoopHandle(self._loop, self._session)

    def on_receive(self, message):
        if isinstance(message, Crash):
            raise RuntimeError(message.error)
        else:
            log.warning("MQTT link ignored an unexpected message: %r", message)

    def on_stop(self):
        self._stop_loop(self.settings.drain_timeout + 10)

    def on_failure(self, exception_type, exception_value, traceback):
        self._stop_loop(5)
        super().on_failure(exception_type, exception_value, traceback)

    def _stop_loop(self, timeout: float) -> None:
        if self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
            except RuntimeError:
                pass  # the loop already ended
            self._thread.join(timeout)

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor through the actor
            log.error("MQTT link failed: %s", exc)
            try:
                self.actor_ref.tell(Crash(str(exc)))
            except pykka.ActorDeadError:
                pass
        finally:
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        on_retired = (lambda: self.supervisor.tell(Retired())) if self.retire else None
        self._session = Session(self.settings, self.status_settings, self.peers, self.apps, self.limits, on_retired)
        ready.set()
        await self._session.run(self._stop_event)


def _property(properties: dict, name: str):
    """An MQTT 5 property of a received message (gmqtt gives lists), or None."""
    value = (properties or {}).get(name)
    return value[0] if isinstance(value, list) and value else value


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
