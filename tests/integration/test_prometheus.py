"""deploy/prometheus/ against Debian's Prometheus: the alert rules pass `promtool check rules` and
their unit tests (each alert fires), the scrape config is valid, and a real Prometheus scraping a
running service holds the numbers of a known sequence: readings, a rejection, requests of each
kind, a broker restart. Skipped, saying so, where Prometheus is not installed (.ci/run installs it)."""

import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
from builders import power, temperature
from conftest import ROOT, Service, free_port, wait_until

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
DEPLOY = ROOT / "deploy" / "prometheus"
pytestmark = pytest.mark.skipif(not (PROMETHEUS and PROMTOOL),
                                reason="no Prometheus here: apt-get install prometheus (.ci/run does)")


def promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=60)


def test_the_rules_and_the_scrape_config_check_and_every_alert_fires_in_its_unit_test():
    checked = promtool("check", "rules", "mqtt-client.rules.yml")
    assert checked.returncode == 0 and "SUCCESS: 9 rules found" in checked.stdout, checked.stdout + checked.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    tested = promtool("test", "rules", "mqtt-client.rules.test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    rules = (DEPLOY / "mqtt-client.rules.yml").read_text()
    tests = (DEPLOY / "mqtt-client.rules.test.yml").read_text()
    alerts = [line.split(":", 1)[1].strip() for line in rules.splitlines() if line.strip().startswith("- alert:")]
    assert len(alerts) == 9 and all(f"alertname: {a}\n        exp_alerts:" in tests for a in alerts)


class Prometheus:
    def __init__(self, tmp_path, target: str):
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          f"rule_files:\n  - {DEPLOY / 'mqtt-client.rules.yml'}\n"
                          f"scrape_configs:\n  - job_name: mqtt-client\n    static_configs:\n"
                          f"      - targets: ['{target}']\n")
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path}/tsdb",
                                      f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        wait_until(lambda: self._get("/-/ready") is not None, 30, what="Prometheus to be ready")

    def _get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return reply.read()
        except OSError:
            return None

    def query(self, expr: str) -> float | None:
        """The value of an expression with one result now (None: no result)."""
        body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        result = json.loads(body)["data"]["result"] if body else []
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def test_a_real_prometheus_scrapes_what_happened(broker, tmp_path, client):
    port = free_port()
    service = Service(broker, tmp_path, METRICS_LISTEN=f"127.0.0.1:{port}")
    prometheus = None
    try:
        service.start().wait_ready()
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}")
        for n in range(4):
            client.publish("home/temperature", temperature("t1", n))
        client.publish("home/power", power("p1", "EB_ON", "2026-04-01T08:00:00"))
        client.publish("home/temperature", {**temperature("t1", 9), "status": "MEDIUM"})
        client.subscribe_replies("app")
        for stem, body in (("temp", {"device_id": "t1", "date": "2026-04-01"}), ("power", {"device_id": "p1",
                           "latest": True}), ("fingerprint", {"device_id": "d1", "date": "2026-02-30"}),
                           ("devices", {})):
            client.request(stem, "app", body)
        expected = {'mqtt_client_readings_stored_total{type="temperature"}': 4,
                    'mqtt_client_readings_stored_total{type="power"}': 1,
                    'mqtt_client_readings_rejected_total{type="temperature", reason="invalid"}': 1,
                    'sum(mqtt_client_requests_total{outcome="ok"})': 3,
                    'mqtt_client_requests_total{kind="fingerprint", outcome="invalid_field"}': 1,
                    'mqtt_client_reply_duration_seconds_count': 4,
                    'mqtt_client_ready': 1, 'up{job="mqtt-client"}': 1}
        wait_until(lambda: {e: prometheus.query(e) for e in expected} == expected, 30,
                   what="Prometheus to hold the numbers")
        broker.stop()
        wait_until(lambda: prometheus.query("mqtt_client_ready") == 0, 30, what="Prometheus to see it not ready")
        broker.start()
        wait_until(lambda: prometheus.query("mqtt_client_broker_connections_total") == 2
                   and prometheus.query("mqtt_client_ready") == 1, 60, what="Prometheus to see it reconnected")
        rules = json.loads(prometheus._get("/api/v1/rules"))["data"]["groups"][0]["rules"]
        assert len(rules) == 9 and all(r["health"] == "ok" for r in rules), rules
    finally:
        if prometheus is not None:
            prometheus.stop()
        service.stop_quietly()
