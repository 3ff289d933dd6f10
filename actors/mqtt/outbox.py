"""The one way out to the broker: every publish is measured against the broker's limits first
(packets.py), since a broker drops a client that publishes past them. A reply that would not fit
becomes a too_large error; an error goes without its correlation data if it only fits that way."""

from __future__ import annotations

import logging

import orjson

from actors.mqtt.client import OneConnectionClient
from actors.mqtt.packets import publish_size
from actors.requests import error_reply, with_request_id

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, max_request_bytes: int):
        self.max_request_bytes = max_request_bytes  # request ids are read from no larger payload
        self.client: OneConnectionClient | None = None  # the connection's, once the broker took it
        self.connected = False
        self.max_packet: int | None = None  # the broker's Maximum Packet Size, if it has one
        self._unsent: dict[str, bytes] = {}  # retained states not published yet (see keep)

    def connected_to(self, client: OneConnectionClient, max_packet: int | None) -> None:
        self.client, self.connected, self.max_packet = client, True, max_packet
        unsent, self._unsent = self._unsent, {}
        for topic, payload in unsent.items():
            self.keep(topic, payload)

    def keep(self, topic: str, payload: bytes) -> None:
        """Publish a state the broker should keep (retained, QoS 1: a device's availability). Without
        a connection the latest of each topic waits for the next one."""
        if not self.send(topic, payload, qos=1, retain=True):
            self._unsent[topic] = payload

    def lost(self) -> None:
        self.client, self.connected = None, False

    def send(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
              correlation: bytes | None = None) -> bool:
        """The one way out to the broker: nothing that would get us disconnected is published."""
        if not self.connected:
            return False  # a request stays unacknowledged: the broker delivers it again
        if not self.fits(topic, payload, correlation, qos):
            log.error("not publishing %d bytes on %s: over the broker's maximum packet size (%d bytes)",
                      len(payload), topic, self.max_packet)
            return True  # dropping it is all we can do; waiting would not make it fit
        extra = {} if correlation is None else {"correlation_data": correlation}
        self.client.publish(topic, payload, qos=qos, retain=retain, **extra)
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
            body = with_request_id(error_reply("too_large", "the reply would exceed the broker's maximum packet size"),
                                   request, self.max_request_bytes)
            payload = orjson.dumps(body)
            if not self.fits(topic, payload, correlation):
                log.error("the request's correlation data (%d bytes) is too large to send back", len(correlation or b""))
                correlation = None
        # QoS 0: an answer is only useful to an app that is connected now; an app that missed
        # it asks again. QoS 0 also keeps replies clear of gmqtt's packet-id limits.
        return self.send(topic, payload, correlation=correlation)

    def refuse(self, reply_topic: str, payload: bytes, correlation: bytes | None, code: str, message: str) -> None:
        """An error reply to the request `payload`, with its request id if readable."""
        body = with_request_id(error_reply(code, message), payload, self.max_request_bytes)
        self.reply(reply_topic, orjson.dumps(body), correlation)
