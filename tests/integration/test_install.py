"""deploy/install.sh, run for real into a throwaway root (--root): the user, the layout and its
modes, a working venv, idempotent upgrades that keep settings and secrets, and uninstall. Only
apt and systemctl are left out there (systemd does not run inside it); --dry-run shows them."""

import os
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import ROOT

from actors.runtime.settings import load_settings

INSTALL = ROOT / "deploy" / "install.sh"


def install(*args, check=True):
    result = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def system_root(tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("installing needs root and useradd")
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check",
                            "-d", str(tmp_path_factory.mktemp("probe")), "-r", str(ROOT / "requirements.txt")],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"installing needs the network (or a package index) for pip, and pip cannot reach it: {reason}")
    root = tmp_path_factory.mktemp("root")
    (root / "etc").mkdir()
    for name in ("passwd", "group", "shadow", "gshadow"):
        if os.path.exists(f"/etc/{name}"):
            shutil.copy(f"/etc/{name}", root / "etc" / name)
    install("--root", str(root), "--with-broker")
    return root


def account(root, name="mqtt-client"):
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def test_the_script_is_valid_bash_and_passes_shellcheck_when_available():
    subprocess.run(["bash", "-n", str(INSTALL)], check=True)
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_a_dry_run_prints_every_action_and_changes_nothing(tmp_path):
    result = install("--dry-run", "--root", str(tmp_path))
    assert list(tmp_path.iterdir()) == []
    actions = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert any(a.startswith("useradd ") and "--system" in a and "/usr/sbin/nologin" in a for a in actions)
    assert any(a.startswith("install -m 0600 ") and a.endswith("/etc/mqtt-client/mqtt-client.env") for a in actions)
    assert any(a.endswith("/etc/systemd/system/mqtt-client.service") for a in actions)
    # On the real system the dry run also shows the systemd steps it would take.
    real = install("--dry-run").stdout
    for step in ("systemctl daemon-reload", "systemctl enable mqtt-client.service",
                 "systemctl restart --no-block mqtt-client.service"):
        assert f"+ {step}" in real


def test_it_installs_the_layout_with_a_system_user_and_private_secrets(system_root):
    user = account(system_root)
    assert user is not None and int(user[2]) < 1000 and user[6] == "/usr/sbin/nologin"
    uid, gid = int(user[2]), int(user[3])
    opt, etc = system_root / "opt" / "mqtt-client", system_root / "etc" / "mqtt-client"
    assert (opt / "system.py").is_file() and (opt / "actors" / "writer.py").is_file()
    assert (opt / "actors" / "__pycache__").is_dir(), "compiled ahead: the service cannot write there"
    env = etc / "mqtt-client.env"
    assert mode(env) == 0o600 and env.stat().st_uid == 0
    settings = etc / "settings.toml"
    assert mode(settings) == 0o640 and settings.stat().st_gid == gid
    for directory in (system_root / "var" / "lib" / "mqtt-client", system_root / "var" / "log" / "mqtt-client"):
        assert mode(directory) == 0o750 and (directory.stat().st_uid, directory.stat().st_gid) == (uid, gid)
    unit = system_root / "etc" / "systemd" / "system" / "mqtt-client.service"
    assert unit.read_text() == (ROOT / "deploy" / "mqtt-client.service").read_text()
    assert (system_root / "etc" / "mosquitto" / "conf.d" / "mqtt-client.conf").read_text() == \
        (ROOT / "deploy" / "mosquitto" / "mqtt-client.conf").read_text()


def test_the_installed_venv_runs_the_service_against_a_broker(system_root, broker):
    opt, data = system_root / "opt" / "mqtt-client", system_root / "var" / "lib" / "mqtt-client"
    env = {**os.environ, "MQTT_BROKER_HOST": "127.0.0.1", "MQTT_BROKER_PORT": str(broker.port),
           "DATABASE_PATH": str(data / "mqtt_data.db"), "LOG_FILE": ""}
    result = subprocess.run([str(opt / ".venv" / "bin" / "python"), str(opt / "system.py"), "--config",
                             str(system_root / "etc" / "mqtt-client" / "settings.toml"), "--check-config"],
                            cwd=data, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok      broker" in result.stdout and "ok      database" in result.stdout


def test_running_it_again_upgrades_the_code_and_keeps_settings_secrets_and_data(system_root):
    etc, opt = system_root / "etc" / "mqtt-client", system_root / "opt" / "mqtt-client"
    data = system_root / "var" / "lib" / "mqtt-client"
    (etc / "settings.toml").write_text('[mqtt]\nclient_id = "site-7"\n')
    (etc / "mqtt-client.env").write_text("MQTT_PASSWORD=sentinel\n")
    (data / "mqtt_data.db").write_bytes(b"the operator's data")
    (opt / "actors" / "writer.py").unlink()  # as if an older version lacked it
    lines_before = (system_root / "etc" / "passwd").read_text().count("\nmqtt-client:")
    install("--root", str(system_root))
    assert (opt / "actors" / "writer.py").is_file()
    assert (etc / "settings.toml").read_text() == '[mqtt]\nclient_id = "site-7"\n'
    assert (etc / "mqtt-client.env").read_text() == "MQTT_PASSWORD=sentinel\n"
    assert mode(etc / "mqtt-client.env") == 0o600
    assert (data / "mqtt_data.db").read_bytes() == b"the operator's data"
    assert (system_root / "etc" / "passwd").read_text().count("\nmqtt-client:") == lines_before == 1


def test_an_upgrade_comments_out_env_lines_that_only_repeat_a_default(system_root):
    """Older releases wrote MQTT_BROKER_PORT=1883 and empty credentials, which overrode settings.toml
    and kept MQTT_TLS=true on port 1883: exactly those lines become comments, the rest stays."""
    env = system_root / "etc" / "mqtt-client" / "mqtt-client.env"
    env.write_text("MQTT_BROKER_HOST=broker.example\nMQTT_BROKER_PORT=1883\nMQTT_CLIENT_ID=mqtt_client_1\n"
                   "MQTT_USERNAME=\nMQTT_PASSWORD=s3cret\nMQTT_TLS=true\n")
    install("--root", str(system_root))
    assert env.read_text() == ("MQTT_BROKER_HOST=broker.example\n# MQTT_BROKER_PORT=1883\n# MQTT_CLIENT_ID=mqtt_client_1\n"
                               "# MQTT_USERNAME=\nMQTT_PASSWORD=s3cret\nMQTT_TLS=true\n")
    assert mode(env) == 0o600
    environ = dict(line.split("=", 1) for line in env.read_text().splitlines() if not line.startswith("#"))
    settings = load_settings(system_root / "etc" / "mqtt-client" / "settings.toml", environ=environ)
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.tls) == ("broker.example", 8883, True)
    install("--root", str(system_root))  # again: nothing more to do
    assert env.read_text().count("# MQTT_BROKER_PORT=1883") == 1


def test_a_new_env_file_sets_nothing_so_settings_toml_decides():
    env = (ROOT / "deploy" / "mqtt-client.env.example").read_text()
    assert [line for line in env.splitlines() if line.strip() and not line.startswith("#")] == []


def test_uninstall_keeps_the_data_unless_purged(system_root):
    install("--root", str(system_root), "--uninstall")
    assert not (system_root / "opt" / "mqtt-client").exists()
    assert not (system_root / "etc" / "systemd" / "system" / "mqtt-client.service").exists()
    assert not (system_root / "etc" / "mosquitto" / "conf.d" / "mqtt-client.conf").exists()
    assert (system_root / "etc" / "mqtt-client" / "mqtt-client.env").exists()
    assert (system_root / "var" / "lib" / "mqtt-client" / "mqtt_data.db").exists()
    assert account(system_root) is not None
    install("--root", str(system_root), "--uninstall", "--purge")
    for gone in ("etc/mqtt-client", "var/lib/mqtt-client", "var/log/mqtt-client"):
        assert not (system_root / gone).exists(), gone
    assert account(system_root) is None
    assert "mqtt-client:" not in (system_root / "etc" / "group").read_text()


def test_purge_alone_is_refused():
    result = install("--purge", "--dry-run", check=False)
    assert result.returncode == 2 and "--purge goes with --uninstall" in result.stderr
