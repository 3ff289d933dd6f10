"""The one way out (actors/mqtt/outbox.py), with a fake client: retained states go at QoS 1 within
the window of unacknowledged publishes the broker allows, the latest of each topic only, the status
first; what a lost connection left unacknowledged goes again on the next one."""

import itertools

from actors.mqtt.outbox import Outbox


class FakeClient:
    """Hands out packet ids as gmqtt does; refuses to go past the broker's Receive Maximum, as
    the broker would (it disconnects such a client)."""

    def __init__(self, receive_maximum=65535):
        self.published = []  # (topic, payload, qos, retain)
        self.unacked = {}
        self.receive_maximum = receive_maximum
        self._ids = itertools.count(1)
        self.on_published = None

    def publish(self, topic, payload, qos=0, retain=False, **extra):
        assert qos == 0
        self.published.append((topic, payload, qos, retain))

    def publish_retained(self, states):
        packet_ids = []
        for topic, payload in states:
            assert len(self.unacked) < self.receive_maximum, "past the broker's Receive Maximum"
            packet_ids.append(next(self._ids))
            self.unacked[packet_ids[-1]] = topic
            self.published.append((topic, payload, 1, True))
        return packet_ids

    def ack_all(self):
        while self.unacked:
            packet_id = next(iter(self.unacked))
            del self.unacked[packet_id]
            self.on_published(packet_id)


def state(n):
    return f"home/availability/temperature/t{n}"


def test_a_kept_state_waits_for_the_next_connection_and_only_the_latest_of_each_topic_goes():
    outbox = Outbox(4096)
    outbox.keep(state(1), b'{"state":"live"}')
    outbox.keep(state(1), b'{"state":"stale"}')
    outbox.keep(state(2), b'{"state":"live"}')
    client = FakeClient()
    outbox.connected_to(client, None, client.receive_maximum)
    assert client.published == [(state(1), b'{"state":"stale"}', 1, True), (state(2), b'{"state":"live"}', 1, True)]
    client.ack_all()
    outbox.keep(state(3), b'{"state":"live"}')  # connected: at once
    assert client.published[-1][0] == state(3)
    client.ack_all()
    outbox.lost()
    again = FakeClient()
    outbox.connected_to(again, None)  # nothing acknowledged is sent twice
    assert again.published == [] and not outbox


def test_a_flood_of_states_keeps_within_the_brokers_receive_maximum_and_all_of_it_goes():
    for receive_maximum in (1, 20):
        outbox = Outbox(4096, window=100)
        client = FakeClient(receive_maximum)
        outbox.connected_to(client, None, receive_maximum)
        for n in range(5000):
            outbox.keep(state(n), b"live")
            assert len(client.unacked) <= receive_maximum
        assert len(client.published) == receive_maximum and len(outbox) == 5000
        outbox.keep("home/status/svc", b"online", urgent=True)  # the status goes before every state waiting
        client.ack_all()
        assert client.published[receive_maximum][0] == "home/status/svc"
        assert sorted(t for t, *_ in client.published if t != "home/status/svc") == sorted(state(n) for n in range(5000))
        assert not outbox and outbox.peak == 5000 - receive_maximum


def test_our_own_window_caps_a_generous_broker():
    outbox = Outbox(4096, window=3)
    client = FakeClient()
    outbox.connected_to(client, None, 65535)
    for n in range(10):
        outbox.keep(state(n), b"live")
    assert len(client.unacked) == 3


def test_what_a_lost_connection_left_unacknowledged_goes_again_unless_a_newer_state_waits():
    outbox = Outbox(4096, window=2)
    client = FakeClient()
    outbox.connected_to(client, None)
    outbox.keep(state(1), b"live")
    outbox.keep(state(2), b"live")
    outbox.keep(state(3), b"live")  # waits: the window is full
    outbox.lost()
    outbox.keep(state(2), b"stale")  # newer than the one in flight when the connection went
    again = FakeClient()
    outbox.connected_to(again, None)
    again.ack_all()
    assert {(t, p) for t, p, *_ in again.published} == {(state(1), b"live"), (state(2), b"stale"), (state(3), b"live")}
    assert len(again.published) == 3


def test_the_outbox_is_bounded_and_says_what_it_dropped():
    outbox = Outbox(4096, limit=10)
    for n in range(15):
        outbox.keep(state(n), b"live")
    assert len(outbox) == 10 and outbox.dropped == 5
    client = FakeClient()
    outbox.connected_to(client, None)
    client.ack_all()
    assert [t for t, *_ in client.published] == [state(n) for n in range(5, 15)]  # the newest kept
