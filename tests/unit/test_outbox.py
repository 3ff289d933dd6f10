"""The one way out (actors/mqtt/outbox.py), with a fake client: a retained state published while
there is no connection goes out, the latest of each topic only, once there is one."""

from actors.mqtt.outbox import Outbox


class FakeClient:
    def __init__(self):
        self.published = []

    def publish(self, topic, payload, qos=0, retain=False, **extra):
        self.published.append((topic, payload, qos, retain))


def test_a_kept_state_waits_for_the_next_connection_and_only_the_latest_of_each_topic_goes():
    outbox = Outbox(4096)
    outbox.keep("home/availability/temperature/t1", b'{"state":"live"}')
    outbox.keep("home/availability/temperature/t1", b'{"state":"stale"}')
    outbox.keep("home/availability/temperature/t2", b'{"state":"live"}')
    client = FakeClient()
    outbox.connected_to(client, None)
    assert client.published == [("home/availability/temperature/t1", b'{"state":"stale"}', 1, True),
                                ("home/availability/temperature/t2", b'{"state":"live"}', 1, True)]
    outbox.keep("home/availability/temperature/t3", b'{"state":"live"}')  # connected: at once
    assert client.published[-1][0] == "home/availability/temperature/t3"
    outbox.lost()
    outbox.connected_to(FakeClient(), None)  # nothing is sent twice
    assert len(client.published) == 3
