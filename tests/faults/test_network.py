"""Fault 3: the broker restarts (with and without its persistence) and the network goes dark."""

import socket
import threading
import time

import pytest
from builders import temperature
from conftest import Broker, MqttClient, Service, free_port, wait_until


def reading(dev, i):
    return temperature(dev, i, "2026-11-01", value=20.0, humidity=40.0)


def config(tmp_path, text="[mqtt]\nreconnect_min_delay = 0.2\nreconnect_max_delay = 1.0\n"):
    path = tmp_path / "faults.toml"
    path.write_text(text)
    return str(path)


def count(service, dev):
    return service.query("SELECT COUNT(*) FROM temperature_logs WHERE device_id = ?", (dev,))[0][0]


class DarkNetwork:
    """A TCP forwarder between the service and the broker whose path can go dark: while cut,
    no byte moves either way and new connections are never answered (they time out), as when
    a network link drops; nothing is closed or refused, so only keepalives can notice."""

    def __init__(self, target_port: int):
        self.port = free_port()
        self.target = target_port
        self.up = threading.Event()
        self.up.set()
        self._held: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self):
        self.up.clear()

    def restore(self):
        held, self._held = self._held, []
        for sock in held:  # attempts made in the dark: their client gave up long ago
            sock.close()
        self.up.set()

    def _accept(self):
        while True:
            sock, _ = self._listener.accept()
            if not self.up.is_set():
                self._held.append(sock)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for src, dst in ((sock, upstream), (upstream, sock)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while data := src.recv(65536):
                self.up.wait()  # in the dark, hold what was sent
                dst.sendall(data)
        except OSError:
            pass
        self.up.wait()
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def dark(broker, tmp_path):
    network = DarkNetwork(broker.port)
    proxied = Broker(tmp_path)
    proxied.port = network.port  # the service connects through the dark network
    service = Service(proxied, tmp_path)
    yield network, service
    network.restore()
    service.stop_quietly()


def go_dark(dark, broker, seconds, tmp_path, settings):
    network, service = dark
    service.start("--config", config(tmp_path, settings)).wait_ready()
    client = MqttClient(broker.port)  # devices and apps reach the broker directly
    client.subscribe_replies("netapp")
    client.publish("home/temperature", reading("before", 0))
    wait_until(lambda: count(service, "before") == 1)
    network.cut()
    started = time.monotonic()
    for i in range(200):  # the broker keeps these for our session
        client.publish("home/temperature", reading("dark", i))
    time.sleep(max(0.0, seconds - (time.monotonic() - started)))  # the length of the outage itself
    network.restore()
    wait_until(lambda: count(service, "dark") == 200, 120, what="the readings sent in the dark")
    reply = wait_until(lambda: client.request("temp", "netapp", {"device_id": "dark", "date": "2026-11-01"}),
                       30, what="a reply after the outage")
    assert reply["count"] == 200
    client.close()
    return service.log()


@pytest.mark.slow
def test_a_10_second_network_cut_is_ridden_out(dark, broker, tmp_path):
    log = go_dark(dark, broker, 10, tmp_path, "[mqtt]\nkeepalive = 60\n")
    # TCP outlives a 10 s gap: at most one reconnection, and nothing logged per retry
    assert log.count("lost the MQTT broker connection") <= 1
    assert log.count("cannot connect to the MQTT broker") <= 1


@pytest.mark.slow
def test_a_2_minute_network_cut_is_noticed_and_recovered_from(dark, broker, tmp_path):
    log = go_dark(dark, broker, 120, tmp_path,
                  "[mqtt]\nkeepalive = 10\nconnect_timeout = 5.0\nreconnect_min_delay = 1.0\nreconnect_max_delay = 10.0\n")
    # noticed by keepalive, then reconnection attempts in the dark timed out: each state change once
    assert log.count("lost the MQTT broker connection") == 1
    assert log.count("cannot connect to the MQTT broker") == 1
    assert log.count("reconnected to the MQTT broker") == 1


def test_after_each_broker_restart_without_its_session_the_service_subscribes_again(tmp_path):
    broker = Broker(tmp_path)  # persistence off: a restarted broker has forgotten our session
    broker.start()
    service = Service(broker, tmp_path)
    restarts = 3
    try:
        service.serve_metrics().start("--config", config(tmp_path)).wait_ready()
        for n in range(1, restarts + 1):
            broker.stop()
            wait_until(lambda: service.metric("mqtt_client_broker_connected") == 0, what="the loss to be noticed")
            broker.start()
            service.wait_online(n + 1)
            client = MqttClient(broker.port)
            try:
                client.publish("home/temperature", reading("after", n))
                client.subscribe_replies("app2")
                reply = wait_until(lambda: (r := client.request(
                    "temp", "app2", {"device_id": "after", "date": "2026-11-01"}))["count"] == n and r)
                assert reply["records"][-1]["timestamp"] == f"2026-11-01T00:00:{n:02d}"
            finally:
                client.close()
        log = service.log()
        assert log.count("reconnected to the MQTT broker") == restarts and "(session new)" in log
        # each outage is logged once, however many attempts it took
        assert log.count("lost the MQTT broker connection") == restarts
        assert log.count("cannot connect to the MQTT broker") <= restarts
    finally:
        service.stop_quietly()
        broker.stop()


def test_readings_a_persistent_broker_held_for_us_across_its_restart_are_stored(tmp_path):
    broker = Broker(tmp_path, persistence=True)
    broker.start()
    service = Service(broker, tmp_path)
    try:
        service.serve_metrics().start("--config", config(tmp_path)).wait_ready()
        broker.stop()  # a broker restart while we are connected ...
        wait_until(lambda: service.metric("mqtt_client_broker_connected") == 0, what="the loss to be noticed")
        broker.start()
        service.wait_online(2)
        assert "(session resumed)" in service.log()
        assert service.terminate() == 0  # ... and one while we are away, with readings queued
        client = MqttClient(broker.port)
        for i in range(100):
            client.publish("home/temperature", reading("held", i))
        client.close()
        broker.stop()  # saves the queued readings to disk
        broker.start()
        service.start("--config", config(tmp_path)).wait_ready()
        wait_until(lambda: count(service, "held") == 100, what="the readings the broker kept")
        assert "(session resumed)" in service.log()
    finally:
        service.stop_quietly()
        broker.stop()
