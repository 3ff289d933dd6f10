"""The files in deploy/ and scripts/ work as the README says."""

import re
import shutil
import subprocess
import sys

import pytest
from builders import power
from conftest import ROOT, Broker, MqttClient, Service, wait_until

import system

UNIT = ROOT / "deploy" / "mqtt-client.service"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_systemd_unit_verifies_cleanly(tmp_path):
    # Point the unit at this checkout (verify insists the ExecStart binary exists).
    text = UNIT.read_text().replace("/opt/mqtt-client", str(ROOT))
    text = re.sub(r"^(User|Group)=mqtt-client$", r"\1=root", text, flags=re.M)
    unit = tmp_path / "mqtt-client.service"
    unit.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_systemd_unit_is_hardened(tmp_path):
    unit = tmp_path / "mqtt-client.service"
    unit.write_text(UNIT.read_text())
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                            capture_output=True, text=True)
    if "--offline" in result.stderr:
        pytest.skip("this systemd-analyze cannot score a unit offline")
    score = float(re.search(r"Overall exposure level for mqtt-client.service: ([\d.]+)", result.stdout).group(1))
    print(f"systemd-analyze security: exposure {score}")
    assert score <= 3.0, result.stdout


def test_the_unit_does_not_restart_on_bad_settings():
    text = UNIT.read_text()
    assert f"RestartPreventExitStatus={system.EXIT_CONFIG}" in text and "Restart=on-failure" in text


def test_the_recommended_broker_settings_work_as_a_debian_drop_in(tmp_path):
    """Debian's mosquitto.conf sets persistence_location and includes conf.d/: our file must
    load beside it (a duplicate key is a start-up error) and serve the service."""
    broker = Broker.debian(tmp_path, {"mqtt-client.conf": (ROOT / "deploy" / "mosquitto" / "mqtt-client.conf").read_text()})
    broker.start()
    service = Service(broker, tmp_path)
    try:
        service.start().wait_ready()
        client = MqttClient(broker.port)
        client.publish("home/power", power("p", "EB_ON", "2026-05-01T00:00:00"))
        client.close()
        wait_until(lambda: service.query("SELECT COUNT(*) FROM power_status_logs")[0][0] == 1)
    finally:
        service.stop_quietly()
        broker.stop()


def simulate(*args):
    return subprocess.run([sys.executable, "scripts/simulate_devices.py", "--quiet", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_the_simulator_checks_every_reading_and_plays_apps(service, broker):
    service.start().wait_ready()
    result = simulate("--port", str(broker.port), "--devices", "3", "--count", "600", "--days", "2",
                      "--invalid", "0.1", "--rate", "300", "--requests", "3", "--verify", str(service.db_path))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "600 acknowledged" in out and out.rstrip().endswith("; OK")
    assert "0 wrong or missing" in out and " 0 replies" not in out
    invalid = int(out.split(" invalid)")[0].rsplit("(", 1)[1])
    assert 0 < invalid < 600
    assert service.query("SELECT COUNT(*) FROM rejected_messages")[0][0] == invalid
    valid = sum(service.query(f"SELECT COUNT(*) FROM {t}")[0][0]
                for t in ("temperature_logs", "power_status_logs", "fingerprint_logs"))
    assert valid == 600 - invalid
    assert service.query("SELECT COUNT(DISTINCT date) FROM temperature_logs")[0][0] == 2


def test_the_simulator_reports_readings_that_were_not_stored(broker, tmp_path):
    Service(broker, tmp_path).start().terminate()  # a database with tables, and no service running
    result = simulate("--port", str(broker.port), "--count", "30", "--verify", str(tmp_path / "mqtt_data.db"),
                      "--verify-timeout", "0.5")
    assert result.returncode == 1 and result.stdout.rstrip().endswith("; MISMATCH")
