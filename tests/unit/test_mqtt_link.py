"""The MQTT link with fake ingest and query actors, against a real Mosquitto: it hands over
what arrives and acknowledges a reading only when told it is committed."""

import dataclasses
import json

import pytest
from conftest import FakePeer, FakeSystemd, MqttClient, wait_until

from actors.mqtt import MqttLink
from actors.protocol.messages import Committed, ReadingBatch, Reply, Request, Strikes, Struck
from actors.runtime.peers import LINK, Peers
from actors.runtime.settings import load_settings

READING = {"device_id": "t1", "temperature": 21.0, "humidity": 40.0, "status": "LOW",
           "timestamp": "2026-01-22T10:00:00"}


@pytest.fixture
def link_factory(broker, caplog, monkeypatch):
    caplog.set_level("INFO", logger="actors.mqtt")
    systemd = FakeSystemd()  # each link says READY=1 once subscribed
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.address)
    loaded = load_settings(environ={"MQTT_BROKER_HOST": "127.0.0.1", "MQTT_BROKER_PORT": str(broker.port),
                                    "MQTT_CLIENT_ID": "link-under-test"})
    settings = dataclasses.replace(loaded.mqtt, drain_timeout=0.5)
    peers = Peers()
    fakes = {name: FakePeer() for name in ("ingest/temperature", "ingest/power", "ingest/fingerprint", "query/0",
                                           "writer")}
    for name, fake in fakes.items():
        peers.register(name, fake)
    peers.define_pool("query", 1)
    links = []

    def start():
        """A new link, once its subscriptions are acknowledged."""
        link = MqttLink.start(LINK, settings, loaded.status, loaded.apps, loaded.limits, peers)
        links.append(link)
        wait_until(lambda: systemd.states().count("READY=1") == len(links), what="the link to subscribe")
        return link, link.proxy().address().get()
    start.peers = peers
    yield start, fakes
    for link in links:
        link.stop()
    systemd.close()


def next_of(fake, kind):
    """The next message of that kind (the writer also gets stats requests)."""
    while not isinstance(message := fake.next(), kind):
        pass
    return message


def next_reading(fake):
    batch = fake.next()
    assert isinstance(batch, ReadingBatch)
    [item] = batch.items
    return item


def test_a_reading_is_handed_over_and_acknowledged_only_once_committed(link_factory, client):
    start, fakes = link_factory
    link, _ = start()
    client.publish("home/temperature", READING)
    item = next_reading(fakes["ingest/temperature"])
    assert item.topic == "home/temperature" and json.loads(item.payload) == READING
    link.stop()  # never committed, so never acknowledged: the broker must deliver it again

    link, handle = start()
    # Redelivered (DUP) to a link that never saw it: in hand when the one before it stopped, which
    # was not handling it (nothing marked it). Its count is looked up first (the delivery limit),
    # then, having none, it is handed on as usual.
    strikes = next_of(fakes["writer"], Strikes)
    [(ack_id, _, topic, look_up)] = strikes.entries
    assert topic == "home/temperature" and look_up and fakes["ingest/temperature"].inbox.empty()
    # Told as the writer tells it, through the peers: the link registered itself before it
    # connected, so the answer to its first message is not dropped (no supervisor here).
    start.peers.tell("link", Struck(((ack_id, 0, False),)))  # it never failed
    batch = fakes["ingest/temperature"].next()
    assert [i.payload for i in batch.items] == [item.payload]
    again = batch.items[0]
    handle.tell(Committed((again.ack_id,)))
    # Once acknowledged it is gone from our session: after another restart, the next thing to
    # arrive is a new reading, not the old one again.
    link.stop()
    link, handle = start()
    client.publish("home/power", {"device_id": "p", "status": "EB_ON", "timestamp": "2026-01-22T10:00:00"})
    assert json.loads(next_reading(fakes["ingest/power"]).payload)["device_id"] == "p"
    assert fakes["ingest/temperature"].inbox.empty()


def test_a_request_goes_to_a_query_actor_and_its_reply_to_the_app(link_factory, broker):
    start, fakes = link_factory
    link, handle = start()
    app = MqttClient(broker.port)
    app.subscribe("home/datafingerprint/phone7")
    app.publish("home/getfingerprint/phone7", {"device_id": "f1", "date": "2026-01-22"})
    request = fakes["query/0"].next()
    assert isinstance(request, Request)
    assert (request.device, request.app_id) == ("fingerprint", "phone7")
    assert json.loads(request.payload) == {"device_id": "f1", "date": "2026-01-22"}
    reply = {"device_id": "f1", "date": "2026-01-22", "count": 0, "records": []}  # as a query actor makes it
    handle.tell(Reply(request.ack_id, json.dumps(reply).encode()))
    assert app.take() == ("home/datafingerprint/phone7", reply)
    app.close()
