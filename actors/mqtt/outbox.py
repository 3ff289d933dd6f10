"""The one way out to the broker: every publish is measured against the broker's limits first
(packets.py), since a broker drops a client that publishes past them. A reply that would not fit
becomes a too_large error; an error goes without its correlation data if it only fits that way.

Retained states (the status, each device's availability) go at QoS 1, and a broker allows only so
many QoS 1 publishes unacknowledged (its Receive Maximum: Mosquitto 20 by default, AWS IoT Core
100); one more gets the client disconnected, and gmqtt raises. So they wait here, at most `window`
of them unacknowledged at once, the latest state of each topic only (a device that went stale
and came back before its turn is published once, as live), status before availability. Replies
and stats are QoS 0: they never wait behind a flood of states."""

from __future__ import annotations

import logging

import orjson

from actors.mqtt.client import OneConnectionClient
from actors.mqtt.packets import publish_size
from actors.protocol.requests import error_reply, with_known

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, max_request_bytes: int, window: int = 100, limit: int = 250_000, soon=None):
        """`window`: our own cap on unacknowledged QoS 1 publishes (the broker's may be lower);
        `limit`: the most states that may wait (topics; one per device at most); `soon(f)`: call f
        once the event loop has handled what it read (the PUBACKs of one read refill the window in
        one write), at once by default."""
        self._soon = soon or (lambda f: f())
        self._pumping = False
        self.max_request_bytes = max_request_bytes  # request ids are read from no larger payload
        self.client: OneConnectionClient | None = None  # the connection's, once the broker took it
        self.connected = False
        self.max_packet: int | None = None  # the broker's Maximum Packet Size, if it has one
        self.cap, self.limit = window, limit
        self.window = 0  # unacknowledged QoS 1 publishes allowed on this connection
        self._urgent: dict[str, bytes] = {}  # the status: before any device's state
        self._waiting: dict[str, bytes] = {}  # retained states not published yet, oldest topic first
        self._unacked: dict[int, tuple[str, bytes, bool]] = {}  # packet id -> (topic, payload, urgent)
        self.peak = 0  # most states waiting at once (for the stats)
        self.dropped = 0  # states dropped because `limit` were waiting

    def __len__(self) -> int:
        """States waiting or unacknowledged."""
        return len(self._urgent) + len(self._waiting) + len(self._unacked)

    def connected_to(self, client: OneConnectionClient, max_packet: int | None, receive_maximum: int = 65535) -> None:
        self.client, self.connected, self.max_packet = client, True, max_packet
        # a few packet ids stay free for SUBSCRIBEs, which share them (gmqtt has 65,535)
        self.window = max(1, min(self.cap, receive_maximum, 65_000))
        client.on_published = self.published
        self._pump()

    def lost(self) -> None:
        """What the broker did not acknowledge goes again on the next connection, unless a newer
        state of its topic waits."""
        self.client, self.connected = None, False
        for topic, payload, urgent in self._unacked.values():
            queue = self._urgent if urgent else self._waiting
            queue.setdefault(topic, payload)
        self._unacked.clear()

    def keep(self, topic: str, payload: bytes, urgent: bool = False) -> None:
        """Publish a state the broker should keep (retained, QoS 1: the status, a device's
        availability) as soon as the window allows; a newer state of a waiting topic replaces it."""
        queue = self._urgent if urgent else self._waiting
        if topic not in queue and len(self._waiting) >= self.limit and not urgent:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            if not self.dropped:
                log.error("%d retained states wait for the broker; dropping the oldest (%s) and any more "
                          "past that (counted in the stats)", self.limit, oldest)
            self.dropped += 1
        queue[topic] = payload
        self.peak = max(self.peak, len(self._waiting))
        self._pump()

    def published(self, packet_id: int) -> None:
        """The broker acknowledged one of our QoS 1 publishes: the window has room for another."""
        if self._unacked.pop(packet_id, None) is not None and not self._pumping:
            self._pumping = True
            self._soon(self._pump)

    def _pump(self) -> None:
        """Publish what the window has room for, in one write."""
        self._pumping = False
        if not self.connected:
            return
        going = []
        while len(self._unacked) + len(going) < self.window and (self._urgent or self._waiting):
            urgent = bool(self._urgent)
            queue = self._urgent if urgent else self._waiting
            topic = next(iter(queue))
            payload = queue.pop(topic)
            if not self.fits(topic, payload, None, 1):
                log.error("not publishing %d bytes on %s: over the broker's maximum packet size (%d bytes)",
                          len(payload), topic, self.max_packet)
                continue
            going.append((topic, payload, urgent))
        if going:
            for packet_id, state in zip(self.client.publish_retained([g[:2] for g in going]), going):
                self._unacked[packet_id] = state

    def send(self, topic: str, payload: bytes, retain: bool = False, correlation: bytes | None = None) -> bool:
        """Publish at QoS 0 now: nothing that would get us disconnected is published."""
        if not self.connected:
            return False  # a request stays unacknowledged: the broker delivers it again
        if not self.fits(topic, payload, correlation):
            log.error("not publishing %d bytes on %s: over the broker's maximum packet size (%d bytes)",
                      len(payload), topic, self.max_packet)
            return True  # dropping it is all we can do; waiting would not make it fit
        extra = {} if correlation is None else {"correlation_data": correlation}
        self.client.publish(topic, payload, qos=0, retain=retain, **extra)
        return True

    def fits(self, topic: str, payload: bytes, correlation: bytes | None = None, qos: int = 0) -> bool:
        return not self.max_packet or publish_size(topic, payload, qos, correlation) <= self.max_packet

    def reply(self, topic: str, payload: bytes, correlation: bytes | None, request: bytes = b"",
               error: bool = True) -> bool:
        """Publish a reply within the broker's maximum packet size: one that would not fit becomes
        a too_large error; an error goes without the correlation data if it only fits that way."""
        if correlation is not None and error and not self.fits(topic, payload, correlation) \
                and self.fits(topic, payload):
            log.error("the request's correlation data (%d bytes) leaves no room for the reply; sent without it",
                      len(correlation))
            correlation = None
        if not self.fits(topic, payload, correlation):
            log.error("a reply of %d bytes on %s would exceed the broker's maximum packet size (%d bytes); "
                      "answered too_large", len(payload), topic, self.max_packet)
            body = with_known(error_reply("too_large", "the reply would exceed the broker's maximum packet size"),
                              request, self.max_request_bytes)
            payload = orjson.dumps(body)
            if not self.fits(topic, payload, correlation):
                log.error("the request's correlation data (%d bytes) is too large to send back", len(correlation or b""))
                correlation = None
        # QoS 0: an answer is only useful to an app that is connected now; an app that missed
        # it asks again. QoS 0 also keeps replies out of the window of unacknowledged publishes.
        return self.send(topic, payload, correlation=correlation)

    def refuse(self, reply_topic: str, payload: bytes, correlation: bytes | None, code: str, message: str) -> None:
        """An error reply to the request `payload`, with what could be read of it."""
        body = with_known(error_reply(code, message), payload, self.max_request_bytes)
        self.reply(reply_topic, orjson.dumps(body), correlation)
