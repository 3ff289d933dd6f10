"""The operator's guide, run: deploy/README.md's bash blocks pasted in order into a shell on a
Debian 12 machine booted under systemd, with a broker, devices and an app around them; then the
cases a guide cannot show in one pass: moving from the original program, an upgrade from the
previous release, the watchdog, and a power cut."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import guide
import pytest
from machine import Machine, available

PROJECT = Path(__file__).resolve().parents[2]
# The release an upgrade starts from: the last one before the guide was made executable.
PREVIOUS_RELEASE = os.environ.get("PREVIOUS_RELEASE", "6ed28b5")
# Each test boots a Debian 12 machine under systemd-nspawn: slow (about five minutes in all) and
# only as root, so only on demand (the README's Running the tests).
WHY_NOT = ("a system check: sudo MQTT_CLIENT_SYSTEM_TESTS=1 scripts/test.sh tests/system (root, ~5 min)"
           if os.environ.get("MQTT_CLIENT_SYSTEM_TESTS") != "1" else available())
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "")

DB = "/var/lib/mqtt-client/mqtt_data.db"
PASSWORD = "guide-pass-1"  # what the operator types for the device and app accounts
TODAY = time.strftime("%Y-%m-%d", time.gmtime())


@pytest.fixture
def machine(tmp_path_factory):
    """A fresh machine, not booted yet (a test may change its root first); gone after the test."""
    work = tmp_path_factory.mktemp("machine", numbered=True)
    os.chmod(work, 0o755)
    commit = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "--verify", "-q", PREVIOUS_RELEASE],
                            capture_output=True, text=True).stdout.strip()
    box = Machine(PROJECT, work, releases=(commit,) if commit else ())
    yield box
    box.destroy()


def reading(device, n, date="2026-01-22"):
    return json.dumps({"device_id": device, "temperature": 20 + n / 10, "humidity": 40.0, "status": "LOW",
                       "timestamp": f"{date}T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}"})


def publish(box, topic, payloads, login=""):
    """Readings as a device on the machine sends them (QoS 1), one mosquitto_pub per line."""
    lines = "\n".join(payloads) + "\n"
    box.root(f"cat > /tmp/payloads <<'EOF'\n{lines}EOF\nmosquitto_pub {login} -q 1 -t {topic} -l < /tmp/payloads")


def ask(box, *args, login="") -> list[dict]:
    """An app's request through scripts/request.py; the replies."""
    done = box.root(f"/opt/mqtt-client/.venv/bin/python /opt/mqtt-client/scripts/request.py {' '.join(args)} "
                    f"--json --timeout 10 {login}", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def count(box, table="temperature_logs", where="1") -> int:
    return int(box.sql(f"SELECT COUNT(*) FROM {table} WHERE {where}") or 0)


def settled(box, expected, table="temperature_logs", where="1", timeout=60):
    box.wait(f"{expected} rows in {table} where {where}", lambda: count(box, table, where) == expected, timeout)


GIT = "sudo apt-get update -qq && sudo apt-get install -y -qq git >/dev/null\n"


def install(box, *options):
    box.run(f"{GIT}git clone -q /srv/mqtt-client.git ~/mqtt-service && cd ~/mqtt-service && "
            f"sudo deploy/install.sh {' '.join(options)}")
    if "--no-start" not in options:
        box.wait("the service to be active", box.active, 90)


class Operator:
    """Runs the guide's blocks one after the other, checking each as it goes."""

    def __init__(self, box):
        self.box, self.done = box, []

    def paste(self, block, answers=()):
        result = self.box.run(block.script(), answers=answers)
        self.done.append(block.line)
        return result.stdout


def test_the_guide_runs_as_written_in_order(machine):
    box = machine
    box.boot()
    op = Operator(box)
    blocks = [b for b in guide.blocks() if not b.example and "Moving from the original" not in b.section]
    by = {}
    for b in blocks:
        by.setdefault(b.section.split(" / ")[-1], []).append(b)

    # Install, then the settings: the client id set in the env file, checked, restarted.
    op.paste(by["Install"][0])
    box.wait("the service to be active after install.sh", box.active, 90)
    box.edit("/etc/mqtt-client/mqtt-client.env", "sed -i 's/^# MQTT_CLIENT_ID=.*/MQTT_CLIENT_ID=lightsail_1/' \"$1\"")
    out = op.paste(by["Install"][1])
    assert "active (running)" in out
    assert "online" in box.root("mosquitto_sub -C 1 -W 5 -t home/status/lightsail_1").stdout

    # A site's data: a day of the seed's example date (to be archived later) and one of today.
    publish(box, "home/temperature", [reading("temp_sensor_01", n) for n in range(40)] +
            [reading("temp_sensor_01", n, TODAY) for n in range(10)])
    publish(box, "home/power", [json.dumps({"device_id": "power_switch_01", "status": "EB_ON",
                                            "timestamp": "2026-01-22T09:15:00"})])
    settled(box, 50)
    assert ask(box, "temperature", "temp_sensor_01", "2026-01-22")[0]["count"] == 40

    # The upgrade block with nothing new to pull: the service restarts and answers.
    op.paste(by["Upgrade"][0])
    box.wait("the service to be active after the upgrade", box.active, 90)
    assert ask(box, "temperature", "temp_sensor_01", TODAY)[0]["count"] == 10

    op.paste(by["Logs"][0])
    assert "INFO" in op.paste(by["Logs"][1])
    out = op.paste(by["Health and status"][0])
    assert "FAILED" not in out and "ok" in out
    assert "home/status/lightsail_1" in op.paste(by["Health and status"][1])

    # Metrics: the endpoints on, and a Prometheus beside the service scraping them, the rules loaded.
    box.edit("/etc/mqtt-client/settings.toml", "sed -i 's|^# listen = .*|listen = \"127.0.0.1:9108\"|' \"$1\"")
    assert "ready" in op.paste(by["Metrics and health"][0])

    def scraped(expr):
        got = box.root(f"curl -s 'http://127.0.0.1:9090/api/v1/query' --data-urlencode 'query={expr}'", check=False)
        return json.loads(got.stdout or "{}").get("data", {}).get("result", [])
    box.wait("Prometheus to scrape the service", lambda: [r["value"][1] for r in scraped("mqtt_client_ready")] == ["1"],
             120)

    def rules():
        return json.loads(box.root("curl -s http://127.0.0.1:9090/api/v1/rules").stdout)["data"]["groups"][0]["rules"]
    box.wait("the 9 alert rules evaluated, each ok", lambda: [r["health"] for r in rules()] == ["ok"] * 9, 60)

    # A backup, readings after it, the restore: the service answers what the backup held.
    op.paste(by["Backups and restore"][0])
    publish(box, "home/temperature", [reading("temp_sensor_01", 100 + n, TODAY) for n in range(30)])
    settled(box, 80)
    op.paste(by["Backups and restore"][1])
    box.wait("the service to be active after the restore", box.active, 90)
    settled(box, 50)
    assert ask(box, "temperature", "temp_sensor_01", TODAY)[0]["count"] == 10

    # The site's time zone: a device stamping UTC is dated as written (21:00Z yesterday) until the
    # zone is set; --redate moves it to the site's today (02:30 in India), and its summary with it.
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    publish(box, "home/temperature", [json.dumps({"device_id": "temp_sensor_01", "temperature": 30.0,
                                                  "humidity": 40.0, "status": "HIGH",
                                                  "timestamp": f"{yesterday}T21:00:00Z"})])
    settled(box, 1, where=f"date = '{yesterday}'")
    box.edit("/etc/mqtt-client/settings.toml", "sed -i 's|^# timezone = .*|timezone = \"Asia/Kolkata\"|' \"$1\"")
    op.paste(by["The site's time zone"][0])
    box.wait("the service to be active in the site's time zone", box.active, 90)
    out = op.paste(by["The site's time zone"][1])
    assert "redate: temperature: 1 readings moved to another date" in out
    box.wait("the service to be active after --redate", box.active, 90)
    assert count(box, where=f"date = '{yesterday}'") == 0
    assert ask(box, "temperature", "temp_sensor_01", TODAY)[0]["count"] == 11
    [hours] = ask(box, "temperature", "temp_sensor_01", "--summary", "hour", "--from-date", TODAY)
    assert hours["buckets"][2] == {"start": f"{TODAY}T02:00:00", "readings": 1, "high": 1, "low": 0,
                                   "temperature": {"min": 30.0, "max": 30.0, "avg": 30.0},
                                   "humidity": {"min": 40.0, "max": 40.0, "avg": 40.0}}

    # Retention: 90 days keeps today and archives the seed's day; the archived day read back.
    box.edit("/etc/mqtt-client/settings.toml", "sed -i '/^\\[retention\\]/a temperature_days = 90' \"$1\"")
    op.paste(by["Retention and archive"][0])
    archived = "/var/lib/mqtt-client/archive/temperature_logs/2026/temperature_logs-2026-01-22.csv.gz"
    box.wait("the day to be archived", lambda: box.root(f"test -f {archived}", check=False).returncode == 0
             and count(box, where="date = '2026-01-22'") == 0, 90)
    op.paste(by["Retention and archive"][1])
    assert count(box, where="date = '2026-01-22'") == 40

    # The broker secured: passwords for everyone, the service's own generated and stored.
    typed = (("[Pp]assword:", PASSWORD),) * 4
    op.paste(by["Security set-up"][0], answers=typed)
    box.wait("the service to be active with its credentials", box.active, 90)
    refused = box.root(f"mosquitto_pub -q 1 -t home/temperature -m '{reading('x', 1)}'", check=False)
    assert refused.returncode != 0  # anonymous devices are refused now
    publish(box, "home/temperature", [reading("temp_sensor_01", 200, TODAY)], login=f"-u device -P {PASSWORD}")
    settled(box, 12, where=f"date = '{TODAY}'")  # (the restart archived the day read back again)
    out = op.paste(by["Security set-up"][1], answers=(("password for phone-anna", PASSWORD),
                                                        ("phone-anna password", PASSWORD)))
    assert "40.0" in out  # request.py's table: the latest record, sent by the device above
    assert "home/status/lightsail_1" in out

    # Scaling down: the instance retired, its session and retained status gone.
    op.paste(by["Scaling out"][0])
    assert not box.active()
    gone = box.root(f"mosquitto_sub -u phone-anna -P {PASSWORD} -C 1 -W 3 -t home/status/lightsail_1", check=False)
    assert gone.stdout.strip() == ""

    # Uninstall keeps the data; installing again carries on; --purge removes everything.
    op.paste(by["Uninstall"][0])
    assert box.root("test -e /opt/mqtt-client || test -e /etc/systemd/system/mqtt-client.service",
                    check=False).returncode == 1
    assert count(box, where=f"date = '{TODAY}'") == 12
    box.run("cd ~/mqtt-service && sudo deploy/install.sh")
    box.wait("the reinstalled service to be active", box.active, 90)
    replies = ask(box, "temperature", "temp_sensor_01", TODAY, login=f"--username phone-anna --password {PASSWORD}")
    assert replies[0]["count"] == 12
    op.paste(by["Uninstall"][1])
    assert box.root("ls -d /etc/mqtt-client /var/lib/mqtt-client /var/log/mqtt-client /opt/mqtt-client; "
                    "id mqtt-client", check=False).stdout.strip() == ""
    assert op.done == [b.line for b in blocks], "a block of the guide was not run"


def test_moving_from_the_original_program(machine):
    """The original program runs with data and a device keeps publishing through the move: every
    reading the broker acknowledged is stored once, the old rows included, under the old client id."""
    box = machine
    shutil.copytree(PROJECT / "tests/system/original", box.dir / "home/ubuntu/mqtt-client")
    shutil.move(box.dir / "home/ubuntu/mqtt-client/mqtt-client.service", box.dir / "etc/systemd/system")
    shutil.copy(PROJECT / "tests/system/original/device.py", box.dir / "root/device.py")
    box.chroot("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients sqlite3 "
               "python3-paho-mqtt >/dev/null && chown -R ubuntu: /home/ubuntu/mqtt-client && "
               "systemctl enable mqtt-client.service mosquitto.service")
    box.boot()
    box.wait("the original program to be active", box.active, 30)
    publish(box, "home/temperature", [reading("old_sensor", n) for n in range(25)])
    old_db = "/home/ubuntu/mqtt-client/mqtt_data.db"
    # the original program writes with a rollback journal: a reader waits for its writes (5 s at most)
    old_sql = f"sqlite3 -cmd '.timeout 5000' {old_db}"
    box.wait("the original program to store", lambda: box.root(
        f"{old_sql} 'SELECT COUNT(*) FROM temperature_logs'").stdout.strip() == "25", 30)

    device = subprocess.Popen(box.inside("/usr/bin/python3", "/root/device.py", "600", "20", "/root/acked",
                                         "moving_sensor"))

    def stored_by_the_original():
        return int(box.root(f"{old_sql} \"SELECT COUNT(*) FROM temperature_logs "
                            "WHERE device_id = 'moving_sensor'\"").stdout or 0)
    box.wait("the original program to store a part of the readings", lambda: stored_by_the_original() >= 100, 30)
    op = Operator(box)
    for block in guide.section("Moving from the original program"):
        out = op.paste(block)
    assert out.strip().splitlines()[-1].strip().isdigit()  # the guide's own count query
    assert device.wait(timeout=120) == 0
    box.wait("the new service to be active", box.active, 60)
    acked = {int(n) for n in (box.dir / "root/acked").read_text().split()}
    assert len(acked) == 600
    settled(box, 600, where="device_id = 'moving_sensor'")
    assert count(box, where="device_id = 'old_sensor'") == 25
    env = (box.dir / "etc/mqtt-client/mqtt-client.env").read_text()
    assert "MQTT_CLIENT_ID=site_a_client" in env and "DATABASE_PATH" not in env
    assert "online" in box.root("mosquitto_sub -C 1 -W 5 -t home/status/site_a_client").stdout
    assert ask(box, "temperature", "old_sensor", "2026-01-22")[0]["count"] == 25
    assert box.root(f"{old_sql} 'SELECT COUNT(*) FROM temperature_logs WHERE device_id = \"old_sensor\"'"
                    ).stdout.strip() == "25"  # the original's database is left as it was


def test_an_upgrade_from_the_previous_release_keeps_answering(machine):
    """The previous release installed with readings of each type, then the guide's Upgrade block:
    an app asking all along gets every reply; the pause is measured."""
    box = machine
    if not box.releases:
        pytest.skip(f"the previous release {PREVIOUS_RELEASE} is not in this clone's history")
    box.boot()
    # (that release's install.sh left the MQTT clients out: installed as its guide's users had them)
    box.run(f"{GIT}sudo apt-get install -y -qq mosquitto-clients sqlite3 >/dev/null\n"
            f"git clone -q /srv/mqtt-client.git ~/mqtt-service && cd ~/mqtt-service && "
            f"git reset -q --hard {box.releases[0]} && sudo deploy/install.sh --with-broker")
    box.wait("the previous release to be active", box.active, 90)
    publish(box, "home/temperature", [reading("temp_sensor_01", n) for n in range(30)])
    publish(box, "home/power", [json.dumps({"device_id": "pw", "status": s, "timestamp": f"2026-01-22T0{i}:00:00"})
                                for i, s in enumerate(("EB_ON", "DG_ON", "EB_OFF"))])
    publish(box, "home/fingerprint", [json.dumps({"device_id": "fp", "user_id": "u1", "authStatus": "PASS",
                                                  "timestamp": "2026-01-22T10:00:00"})])
    settled(box, 30)
    settled(box, 3, "power_status_logs")
    # An app asks every 0.2 s from before the upgrade until after it; each request must be answered.
    box.root("cat > /root/app.sh <<'EOF'\nwhile [ ! -e /root/stop ]; do\n"
             "  t=$(date +%s.%N); r=$(mosquitto_rr -q 1 -t home/gettemp/ops -e home/datatemp/ops -W 10 "
             "-m '{\"device_id\": \"temp_sensor_01\", \"date\": \"2026-01-22\"}') || r=none\n"
             "  echo \"$t $(date +%s.%N) $(echo \"$r\" | grep -o '\"count\": *[0-9]*' | tr -d ' ')\" >> /root/replies\n"
             "  sleep 0.2\ndone\nEOF")
    app = subprocess.Popen(box.inside("/bin/bash", "/root/app.sh"))
    replies = box.dir / "root/replies"

    def answered():
        return len(replies.read_text().splitlines()) if replies.exists() else 0
    box.wait("the app's first answers", lambda: answered() >= 5, 30)
    started = time.time()
    (upgrade,) = guide.section("Upgrade")
    box.run(upgrade.script())
    box.wait("the upgraded service to be active", box.active, 120)
    after = answered()
    box.wait("the app's answers from the upgraded service", lambda: answered() >= after + 5, 30)
    box.root("touch /root/stop")
    app.wait(timeout=30)
    rows = [line.split() for line in (box.dir / "root/replies").read_text().splitlines()]
    assert all(len(r) == 3 and r[2] == '"count":30' for r in rows), rows
    pause = max(float(b[0]) - float(a[1]) for a, b in zip(rows, rows[1:]) if float(a[0]) >= started - 1)
    slowest = max(float(r[1]) - float(r[0]) for r in rows)
    print(f"upgrade from {PREVIOUS_RELEASE}: {len(rows)} requests, all answered; slowest reply {slowest:.2f} s, "
          f"longest gap between replies {pause:.2f} s")
    assert ask(box, "power", "pw", "2026-01-22")[0]["count"] == 3
    env = (box.dir / "etc/mqtt-client/mqtt-client.env").read_text()
    assert "\n# MQTT_BROKER_PORT=1883\n" in env and "\nMQTT_BROKER_PORT" not in env
    assert box.sql("SELECT MAX(version) FROM schema_version") == "6"
    assert ask(box, "devices")[0]["count"] >= 3


def test_the_watchdog_restarts_a_service_whose_writer_is_stuck(machine):
    """Every commit made to hang (tests/faults/slow_service.py, through a drop-in): systemd's
    watchdog (WatchdogSec=30) kills and restarts it; without the fault the reading is stored."""
    box = machine
    box.boot()
    install(box, "--with-broker")
    box.root("install -D -m 0644 /home/ubuntu/mqtt-service/tests/faults/slow_service.py "
             "/opt/mqtt-client/tests/faults/slow_service.py && mkdir -p /etc/systemd/system/mqtt-client.service.d && "
             "printf '[Service]\\nEnvironment=SLOW_COMMIT_SECONDS=3600\\nExecStart=\\nExecStart=/opt/mqtt-client/.venv/bin/python"
             " /opt/mqtt-client/tests/faults/slow_service.py --config /etc/mqtt-client/settings.toml\\n'"
             " > /etc/systemd/system/mqtt-client.service.d/stuck.conf && systemctl daemon-reload && "
             "systemctl restart mqtt-client")
    box.wait("the stuck-writer service to be active", box.active, 60)
    publish(box, "home/temperature", [reading("stuck", 1)])
    results = set()

    def watchdog_fired():
        show = box.root("systemctl show -p Result -p NRestarts mqtt-client").stdout
        results.add(show.split("Result=")[1].split()[0])
        return "watchdog" in results

    box.wait("systemd's watchdog to fire", watchdog_fired, 90)
    box.wait("systemd to restart it", box.active, 60)
    box.root("rm /etc/systemd/system/mqtt-client.service.d/stuck.conf && systemctl daemon-reload && "
             "systemctl restart mqtt-client")
    settled(box, 1, where="device_id = 'stuck'")


def test_a_power_cut_during_ingest_loses_nothing_the_broker_acknowledged(machine, tmp_path):
    """The machine dies at once while a device publishes at 200/s (the broker and the device run
    elsewhere, here on the host); after it boots again every acknowledged reading is stored once."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "broker.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                                          "max_queued_messages 100000\n")
    broker = subprocess.Popen([mosquitto, "-c", str(tmp_path / "broker.conf")], stderr=subprocess.DEVNULL)
    box = machine
    try:
        box.boot(private_network=False)
        install(box, "--no-start")
        box.root(f"printf 'MQTT_BROKER_PORT={port}\\nMQTT_CLIENT_ID=cut_test\\n' >> /etc/mqtt-client/mqtt-client.env"
                 " && systemctl start mqtt-client")
        box.wait("the service to be active", box.active, 90)
        acked = tmp_path / "acked"
        device = subprocess.Popen([sys.executable, str(PROJECT / "tests/system/original/device.py"), "3000", "200",
                                   str(acked), "cut_sensor", str(port)], cwd=tmp_path)
        box.wait("ingest under way", lambda: box.root(f"test -f {DB}", check=False).returncode == 0
                 and count(box, where="device_id = 'cut_sensor'") > 500, 60)
        stored_before = count(box, where="device_id = 'cut_sensor'")
        box.power_cut()
        assert device.wait(timeout=120) == 0
        box.boot(private_network=False)
        box.wait("the service to be active after the cut", box.active, 120)
        numbers = {int(n) for n in acked.read_text().split()}
        assert len(numbers) == 3000
        settled(box, 3000, where="device_id = 'cut_sensor'", timeout=120)
        assert box.sql("SELECT COUNT(DISTINCT timestamp) FROM temperature_logs WHERE device_id = 'cut_sensor'") == "3000"
        print(f"power cut with {stored_before} of 3000 readings stored: after the boot 3000 stored, once each")
    finally:
        broker.terminate()
        broker.wait(10)
