"""What every common broker takes: topic limits and the size of a PUBLISH packet, counted before
we publish. A broker drops a client that publishes past its limits (Mosquitto does, measured: a
250-level topic, a packet over `max_packet_size`), so a reply that would not fit must never be sent.

Topic limits are the strictest of the brokers this service is deployed with:
- AWS IoT Core: a topic of at most 256 bytes (UTF-8) and 7 slashes (8 levels);
- Mosquitto: 65,535 bytes (the protocol's own limit) and 200 levels.
"""

from __future__ import annotations

import re

MAX_TOPIC_BYTES = 256
MAX_TOPIC_LEVELS = 8
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # control characters and lone surrogates


def topic_problem(topic) -> str | None:
    """Why a broker could refuse to route `topic` (or drop us for publishing to it); None if fine."""
    if not isinstance(topic, str):
        return "is not UTF-8 text"
    size = len(topic.encode("utf-8", "surrogatepass"))
    if size > MAX_TOPIC_BYTES:
        return f"is {size} bytes, over the {MAX_TOPIC_BYTES}-byte limit"
    levels = topic.count("/") + 1
    if levels > MAX_TOPIC_LEVELS:
        return f"has {levels} levels, over the {MAX_TOPIC_LEVELS}-level limit"
    if "+" in topic or "#" in topic:
        return "holds a wildcard (+ or #)"
    if _CONTROL.search(topic):
        return "holds control characters"
    return None


def _varint_size(n: int) -> int:
    """Bytes of an MQTT variable byte integer."""
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def publish_size(topic: str, payload: bytes, qos: int = 0, correlation: bytes | None = None) -> int:
    """The whole MQTT 5 PUBLISH packet: fixed header, topic, packet id, properties, payload."""
    properties = 0 if correlation is None else 1 + 2 + len(correlation)
    remaining = (2 + len(topic.encode("utf-8", "surrogatepass")) + (2 if qos else 0)
                 + _varint_size(properties) + properties + len(payload))
    return 1 + _varint_size(remaining) + remaining
