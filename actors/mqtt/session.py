"""The MQTT session: the connection loop (connect, subscribe, lose, back off, again), retiring, and
the retained status and stats; the messages themselves are the traffic's (traffic.py).

It runs in the MQTT link's asyncio loop (link.py). Every QoS 1 message is acknowledged only when
the rest of the system says so: a reading once the writer has committed it (or its rejection), a
request once its reply has been published. If the connection drops first, the acknowledgement is
never sent and the broker, which keeps our persistent session, delivers the message again; the
unique index makes a second delivery harmless.

Readings are passed to the ingest actors in batches: everything gmqtt parsed from one socket
read goes out as one message per device type, and the acknowledgements of one commit go back to
the broker in one write. What is in hand is in inflight.py, the delivery limit in limit.py, where
messages go in routing.py, what the service says about itself in status.py, retiring in retire.py."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from typing import Callable

import gmqtt
from gmqtt.mqtt.constants import MQTTv50

from actors.devices import BUILTIN_TYPES, DeviceTypes
from actors.mqtt.client import PERMANENT_REFUSALS, OneConnectionClient, property_of
from actors.mqtt.outbox import Outbox
from actors.mqtt.retire import Retirement
from actors.mqtt.status import Heartbeat, StatusReport
from actors.mqtt.traffic import Traffic
from actors.protocol.messages import WriterStats
from actors.runtime.handling import Mark
from actors.runtime.notify import notify
from actors.runtime.peers import Peers
from actors.runtime.settings import AppsSettings, LimitsSettings, MqttSettings, StatusSettings
from actors.runtime.tls import explain, tls_context

log = logging.getLogger(__name__)
OUTBOX_DRAIN = 2.0  # on a stop, seconds the status and states waiting in the outbox may take


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


class Session:
    """Lives in the asyncio loop: the gmqtt client, and the acknowledgements it owes."""

    def __init__(self, settings: MqttSettings, status: StatusSettings, peers: Peers, apps: AppsSettings,
                 limits: LimitsSettings, on_retired: Callable[[], None] | None = None,
                 died_with: frozenset[int] | None = frozenset(), mark: Mark | None = None, linger: float = 0.0,
                 report: StatusReport | None = None, max_waiting: int = 250_000, types: DeviceTypes = BUILTIN_TYPES):
        """With `on_retired`, retire this instance instead of serving (retire.py). `died_with`,
        `mark` and `linger` (database.commit_linger): see Traffic. `report`: the process's (it
        outlives a restarted link: connections, start time, ack ids); `max_waiting`: see Outbox."""
        self.settings = settings
        self.report = report or StatusReport(settings.client_id, status)
        self.report.link_started()
        self._ready = False
        self.backoff = Backoff(settings.reconnect_min_delay, settings.reconnect_max_delay)
        self.client: OneConnectionClient | None = None  # the one connecting or connected
        self.outbox = Outbox(limits.max_request_bytes, settings.max_inflight_publishes, max_waiting,
                             lambda f: asyncio.get_running_loop().call_soon(f))
        self.traffic = Traffic(settings, apps, limits, peers, self.report, self.outbox, self._fail, died_with,
                               mark or Mark(None), linger, types)
        self._closing = False
        self._lost = asyncio.Event()  # the current connection is gone (or must go: retiring, failing)
        self._failure: Exception | None = None  # a bug in the link itself: see _fail
        self._lost_at: float | None = None
        self._topics = self.traffic.router.subscriptions
        self._tls = tls_context(settings)
        self.heartbeat = Heartbeat(self.report, status.stats_interval, peers, self.outbox,
                                   lambda: len(self.traffic.inflight))
        self.retirement = None if on_retired is None else Retirement(
            self.traffic, self.outbox, self.report, self._topics, self._end_session, self._lost.set, on_retired)

    # -- connection ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set: connect, wait for a loss, back off, again."""
        self._loop = asyncio.get_running_loop()
        self._stop = stop
        self.traffic.start(self._loop)
        self.heartbeat.start(self._loop)
        while await self._connect():
            await _first_of(stop, self._lost)
            if self._failure is not None:
                raise self._failure
            if stop.is_set():
                break
            client, self.client = self.client, None
            self.traffic.lost()
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
        will = gmqtt.Message(self.report.status_topic, self.report.status("offline", "connection lost"), qos=1,
                             retain=True)
        client = OneConnectionClient(s.client_id, clean_session=False, session_expiry_interval=s.session_expiry,
                                     receive_maximum=s.receive_maximum, will_message=will)
        if s.username:
            client.set_auth_credentials(s.username, s.password or None)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self.traffic.on_message
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        return client

    async def _discard(self, client: OneConnectionClient) -> None:
        try:
            await client.disconnect()
        except Exception:  # noqa: BLE001 - the connection is already gone; nothing to clean up
            pass

    def _on_connect(self, client, session_present, result, properties):
        self.traffic.connected_to(client, property_of(properties, "maximum_packet_size"), client.receive_maximum)
        self.backoff.reset()
        s = self.settings
        session = "resumed" if session_present else "new"
        if self._lost_at is None:
            log.info("connected to the MQTT broker at %s:%s%s as %s (session %s)", s.host, s.port,
                     " over TLS" if self._tls else "", s.client_id, session)
        else:
            log.warning("reconnected to the MQTT broker after %.1f s (session %s)",
                        time.monotonic() - self._lost_at, session)
            self._lost_at = None
        if self.retirement is not None:
            self.retirement.connected(client)
            return
        # gmqtt never resubscribes. Subscribing again is harmless when the session survived,
        # and essential when the broker had no session for us.
        # Retain as published: a reading that was published retained says so, on its first delivery
        # as on every later one (each subscribe), and is kept once (Inbound.again).
        client.subscribe([gmqtt.Subscription(t, qos=1, retain_as_published=True) for t in self._topics])

    def _on_subscribe(self, client, mid, granted, properties):
        refused = [t for t, code in zip(self._topics, granted) if code >= 0x80]
        if refused:
            log.error("the broker refused our subscription to %s (check its ACL)", ", ".join(refused))
        else:
            log.info("subscribed to %d topics; taking readings and requests", len(granted))
            # Online once subscribed: a device or app that sees it can count on being heard.
            self.outbox.keep(self.report.status_topic, self.report.status("online"), urgent=True)
            if not self._ready:  # the database is open (the writer started first) and we listen
                self._ready = True
                notify("READY=1")

    def _on_unsubscribe(self, client, mid, granted):
        self.retirement.unsubscribed()

    async def _end_session(self) -> bool:
        """Disconnect with Session Expiry 0 (retiring); True once the broker confirmed it."""
        client, self.client, self.outbox.connected = self.client, None, False
        return await client.end_session(self.settings.connect_timeout)

    def _on_disconnect(self, client, packet, exc=None):
        if client is not self.client or not self.outbox.connected or self._lost.is_set() or self._closing:
            # A client we discarded ourselves, or an attempt that never got its CONNACK: the
            # connect loop deals with that one (its timeout), it is not a lost connection.
            return
        self.outbox.connected = False
        self._lost_at = time.monotonic()
        log.warning("lost the MQTT broker connection; reconnecting with backoff "
                    "(unacknowledged messages will be delivered again)")
        self._lost.set()

    async def close(self) -> None:
        """Stop taking messages, give what is in hand time to be committed and acknowledged,
        then disconnect. Messages that arrive meanwhile are never acknowledged: the broker
        keeps them for our next start."""
        self._closing = True
        self.traffic.stop_taking()
        if remaining := await self.traffic.drain(self.settings.drain_timeout):
            log.warning("%d messages were not committed in time; the broker will deliver them again", remaining)
        if self.client is not None:
            if self.outbox.connected:  # a clean DISCONNECT cancels the last will: say it ourselves
                self.outbox.keep(self.report.status_topic, self.report.status("offline", "stopped"), urgent=True)
                await self._outbox_sent(OUTBOX_DRAIN)
            await self._discard(self.client)
        self.traffic.lost()
        log.info("disconnected from the MQTT broker (at most %d messages were in hand at once)",
                 self.traffic.inflight.peak)

    async def _outbox_sent(self, timeout: float) -> None:
        """Give the states waiting in the outbox (the status, availability) up to `timeout` to go out."""
        deadline = time.monotonic() + timeout
        while self.outbox and self.outbox.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.outbox:
            log.warning("%d retained states were not published before disconnecting", len(self.outbox))

    def _fail(self, exc: Exception, what: str) -> None:
        """A bug while handling a message must not leave it in hand for ever, unanswered: the link
        fails instead, and is restarted; the broker then delivers what it held again, and the
        delivery limit counts the failure against the message it failed on (DeliveryLimit.blame)."""
        log.error("the MQTT link failed while handling %s", what, exc_info=exc)
        if self._failure is None:
            self._failure = exc
            self._lost.set()

    # -- messages from the other actors ---------------------------------------------------

    def receive(self, message) -> None:
        """Every message from the other actors (through LoopHandle)."""
        try:
            if isinstance(message, WriterStats):
                self.heartbeat.answered(message)
            else:
                self.traffic.receive(message)
        except Exception as exc:  # noqa: BLE001 - see _fail
            self.traffic.limit.blame(message)
            self._fail(exc, type(message).__name__)


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
