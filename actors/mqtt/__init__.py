"""The MQTT side: the link actor (link.py), its session and connection loop (session.py), the gmqtt
client (client.py), and the pure parts: what is in hand (inflight.py), the delivery limit
(limit.py), where messages go (routing.py), broker limits (packets.py), status and stats (status.py)."""

from actors.mqtt.link import MqttLink

__all__ = ["MqttLink"]
