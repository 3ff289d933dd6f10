"""deploy/mosquitto/secure.conf and acl on a real Mosquitto with passwords: the service works with exactly what it
is granted; an app reads only its own replies (whatever it subscribes to) and asks only as itself;
devices only publish readings; anonymous clients are refused."""

import subprocess

import paho.mqtt.client as mqtt
import pytest
from builders import temperature
from conftest import ROOT, Broker, MqttClient, Service, wait_until

USERS = {"mqtt-client": "svc-pw", "device": "dev-pw", "phone-a": "a-pw", "phone-b": "b-pw"}


@pytest.fixture
def locked(tmp_path):
    passwords = tmp_path / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwords), user, password],
                       check=True)
    # The shipped secure.conf, with its two paths pointed at this test's files.
    secure = (ROOT / "deploy" / "mosquitto" / "secure.conf").read_text()
    secure = secure.replace("/etc/mosquitto/passwd", str(passwords))
    secure = secure.replace("/etc/mosquitto/mqtt-client.acl", str(ROOT / "deploy" / "mosquitto" / "acl"))
    lines = [line for line in secure.splitlines() if line.strip() and not line.startswith("#")]
    assert [line.split()[0] for line in lines] == ["allow_anonymous", "password_file", "acl_file"]
    broker = Broker(tmp_path, extra=tuple(line for line in lines if not line.startswith("allow_anonymous")))
    broker.start()
    service = Service(broker, tmp_path, MQTT_USERNAME="mqtt-client", MQTT_PASSWORD=USERS["mqtt-client"])
    service.start().wait_ready()
    clients = {name: MqttClient(broker.port, username=name, password=USERS[name]) for name in USERS
               if name != "mqtt-client"}
    yield broker, service, clients
    for c in clients.values():
        c.close()
    service.stop_quietly()
    broker.stop()


def reading(device_id, minute):
    return temperature(device_id, 36000 + minute * 60, "2026-03-01", value=20.0, humidity=40.0)


def ask(client, app_id, device_id):
    client.publish(f"home/gettemp/{app_id}", {"device_id": device_id, "date": "2026-03-01"})


def test_the_service_works_with_what_the_acl_grants_it(locked):
    broker, service, clients = locked
    clients["device"].publish("home/temperature", reading("t1", 0))
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] == 1)
    clients["phone-a"].subscribe("home/datatemp/phone-a")
    assert clients["phone-a"].request("temp", "phone-a", {"device_id": "t1", "date": "2026-03-01"})["count"] == 1
    # the catalogue, and the availability the service publishes (retained) for every app to watch
    clients["phone-a"].subscribe("home/datadevices/phone-a")
    assert clients["phone-a"].request("devices", "phone-a", {})["devices"][0]["device_id"] == "t1"
    clients["phone-b"].subscribe("home/availability/#")
    assert clients["phone-b"].take() == ("home/availability/temperature/t1",
                                         {"state": "live", "last_seen": "2026-03-01T10:00:00",
                                          "received_at": service.query("SELECT received_at FROM devices")[0][0]})
    assert "refused our subscription" not in service.log()


def test_an_app_never_receives_another_apps_replies(locked):
    broker, service, clients = locked
    a, b = clients["phone-a"], clients["phone-b"]
    for topic in ("home/datatemp/phone-b", "home/datatemp/+", "home/+/+", "#"):
        a.subscribe(topic)  # Mosquitto grants the subscription and filters what it delivers
    b.subscribe("home/datatemp/phone-b")
    ask(b, "phone-b", "only-for-b")
    assert b.take()[1]["device_id"] == "only-for-b"
    ask(a, "phone-a", "for-a")  # a's own reply comes after b's would have
    seen = []
    while not seen or seen[-1] != ("home/datatemp/phone-a", "for-a"):
        topic, message = a.take()  # also retained status messages, through '#'
        seen.append((topic, message.get("device_id")))
    assert not [s for s in seen if s[1] == "only-for-b"], seen


def test_an_app_cannot_ask_in_another_apps_name(locked):
    broker, service, clients = locked
    a, b = clients["phone-a"], clients["phone-b"]
    b.subscribe("home/datatemp/phone-b")
    ask(a, "phone-b", "spoofed")  # dropped by the broker: a may write only home/gettemp/phone-a
    ask(b, "phone-b", "genuine-1")
    ask(b, "phone-b", "genuine-2")
    replies = {b.take()[1]["device_id"], b.take()[1]["device_id"]}  # the spoofed one would be first
    assert replies == {"genuine-1", "genuine-2"}
    assert b.messages.empty()


def test_apps_cannot_publish_readings_and_devices_cannot_read_replies(locked):
    broker, service, clients = locked
    a, device = clients["phone-a"], clients["device"]
    device.subscribe("home/#")
    a.publish("home/temperature", reading("forged", 1))
    device.publish("home/temperature", reading("real", 2))
    wait_until(lambda: service.query("SELECT COUNT(*) FROM temperature_logs")[0][0] >= 1)
    a.subscribe("home/datatemp/phone-a")
    assert a.request("temp", "phone-a", {"device_id": "real", "date": "2026-03-01"})["count"] == 1
    assert service.query("SELECT device_id FROM temperature_logs") == [("real",)]
    while not device.messages.empty():
        topic, _ = device.messages.get()
        assert not topic.startswith("home/data"), topic


def test_anonymous_clients_are_refused(locked):
    broker, service, clients = locked
    anonymous = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon")
    assert anonymous.connect("127.0.0.1", broker.port) == 0  # the TCP part
    refused = []
    anonymous.on_connect = lambda c, u, flags, reason, props: refused.append(reason.is_failure)
    anonymous.loop_start()
    try:
        wait_until(lambda: refused, what="a CONNACK")
        assert refused == [True]
    finally:
        anonymous.loop_stop()


def test_as_debian_drop_ins_secure_conf_loads_after_and_overrides_the_local_listener(tmp_path):
    """Installed as the README says, secure.conf sorts after mqtt-client.conf in conf.d/ and
    turns off the anonymous access the local listener allows."""
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "phone-a", "a-pw"], check=True)
    deploy = ROOT / "deploy" / "mosquitto"
    broker = Broker.debian(tmp_path, {
        "mqtt-client.conf": (deploy / "mqtt-client.conf").read_text(),
        "mqtt-client.secure.conf": (deploy / "secure.conf").read_text().replace("/etc/mosquitto/passwd", str(passwords))
        .replace("/etc/mosquitto/mqtt-client.acl", str(deploy / "acl"))})
    broker.start()
    try:
        results = []
        for attempt, credentials in enumerate(((), ("phone-a", "a-pw"))):
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            if credentials:
                c.username_pw_set(*credentials)
            c.on_connect = lambda cl, u, flags, reason, props: results.append(reason.is_failure)
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            wait_until(lambda: len(results) == attempt + 1, what="a CONNACK")
            c.loop_stop()
        assert results == [True, False]  # anonymous refused, the app let in
    finally:
        broker.stop()
