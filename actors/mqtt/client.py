"""The gmqtt client, changed where the service needs it: the only module that touches gmqtt's
internals (gmqtt is pinned in requirements.txt). It acknowledges QoS 1 messages when told to, all
of one commit in one write; it holds one connection only (the session makes a new client for
each); it can stop reading the socket (flow control) and end its broker session for good."""

from __future__ import annotations

import asyncio
import logging
import struct

import gmqtt
from gmqtt.mqtt.handler import MqttPackageHandler

log = logging.getLogger(__name__)

# CONNACK refusals that waiting will not fix: bad credentials, not authorized, banned, bad
# client id, unsupported protocol. The link fails; past the restart limit, so does the process.
PERMANENT_REFUSALS = {4, 5, 132, 133, 134, 135, 138, 140}


class AckLaterHandler(MqttPackageHandler):
    """gmqtt's packet handler, changed in one respect: a QoS 1 PUBLISH goes to on_message at once,
    with its packet id, and no PUBACK is sent; the session sends it after the commit.

    gmqtt's own way to delay a PUBACK (optimistic_acknowledgement=False) runs an asyncio task per
    message and writes each PUBACK to the socket on its own: measured, that was most of the
    service's CPU per reading (32 µs against 15 µs for a subscriber that acknowledges on receipt)."""

    def _handle_qos_1_publish_packet(self, mid, packet, print_topic, properties):
        self.on_message(print_topic, packet, 1, properties, mid)

    def _apply_receive_maximum(self):
        """gmqtt sizes its packet ids by the broker's Receive Maximum and raises OverflowError past
        it; the outbox keeps within that window itself (Outbox.window), so the ids stay unlimited:
        a SUBSCRIBE, which the broker does not count, never fails for a full window."""
        super()._apply_receive_maximum()
        values = self._connack_properties.get("receive_maximum")
        self.broker_receive_maximum = values[0] if values else 65535
        self.id_generator._max = 65536


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
        self.reading_paused = False
        self.on_published = lambda packet_id: None  # the broker acknowledged a QoS 1 publish of ours

    @property
    def receive_maximum(self) -> int:
        """How many QoS 1 publishes the broker lets us have unacknowledged (its CONNACK's)."""
        return getattr(self._package_handler, "broker_receive_maximum", 65535)

    def publish_retained(self, states: list[tuple[str, bytes]]) -> list[int]:
        """Publish retained states at QoS 1, all in one write; their packet ids, which on_published
        is called with as the broker acknowledges them (gmqtt frees the ids). Built here rather than
        by gmqtt (a Message and a packet builder each: three times the cost, in a fleet's first
        minute). Not kept for a resend: a connection's client is not reused, and the outbox
        publishes again what a lost connection left unacknowledged."""
        ids = self._package_handler.id_generator
        packet_ids = [ids.next_id() for _ in states]
        packets = []
        for (topic, payload), packet_id in zip(states, packet_ids):
            name = topic.encode()
            rest = len(name).to_bytes(2, "big") + name + packet_id.to_bytes(2, "big") + b"\0" + payload
            packets.append(b"\x33" + remaining_length(len(rest)) + rest)  # PUBLISH, QoS 1, retain
        self._package_handler.current_connection.send_package(b"".join(packets))
        return packet_ids

    def _remove_message_from_queue(self, mid):  # gmqtt calls it on a PUBACK
        super()._remove_message_from_queue(mid)
        self.on_published(mid)

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
        """Stop (or resume) reading from the socket; TCP then pushes back on the broker.

        Mosquitto 2.0.11 keeps sending past our Receive Maximum once acknowledgements flow
        (measured: 41,500 messages in hand with 1000 allowed, while commits were slow). So the
        link enforces it: with receive_maximum messages in hand it pauses, and the broker queues
        the rest. What asyncio had already read still comes through, so the bound is
        receive_maximum messages plus 384 KiB of socket data. Pausing again is not a no-op:
        asyncio's StreamReader may have resumed reading meanwhile."""
        if pause and not self.reading_paused:
            log.debug("holding back: receive maximum reached")
        self.reading_paused = pause
        connection = self._package_handler.current_connection
        transport = getattr(connection, "_transport", None)
        if transport is not None and not transport.is_closing():
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()


def remaining_length(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def property_of(properties: dict, name: str):
    """An MQTT 5 property of a received message (gmqtt gives lists), or None."""
    value = (properties or {}).get(name)
    return value[0] if isinstance(value, list) and value else value
