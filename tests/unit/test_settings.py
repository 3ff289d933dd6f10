import dataclasses
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from actors.devices import BUILTIN_TYPES
from actors.runtime.settings import PER_TYPE, SECTIONS, SettingsError, describe_url, keys, load_settings
from actors.runtime.settings.values import Integer


def test_defaults_come_from_settings_toml():
    s = load_settings(environ={})
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.client_id) == ("localhost", 1883, "mqtt_client_1")
    assert s.database.path == "mqtt_data.db" and s.logging.file == "mqtt_client.log"
    assert s.mqtt.session_expiry >= 7 * 24 * 3600


def test_environment_overrides_every_seed_variable():
    s = load_settings(environ={
        "MQTT_BROKER_HOST": "broker.example", "MQTT_BROKER_PORT": "8883", "MQTT_CLIENT_ID": "svc-7",
        "MQTT_USERNAME": "svc", "MQTT_PASSWORD": "s3cret", "DATABASE_PATH": "/data/x.db",
        "LOG_FILE": "/var/log/x.log", "LOG_LEVEL": "warning"})
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.client_id) == ("broker.example", 8883, "svc-7")
    assert (s.mqtt.username, s.mqtt.password) == ("svc", "s3cret")
    assert (s.database.path, s.logging.file, s.logging.level) == ("/data/x.db", "/var/log/x.log", "WARNING")
    assert "s3cret" not in repr(s)


def test_a_config_file_overrides_defaults_and_the_environment_overrides_both(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[mqtt]\nport = 1999\nhost = "from-file"\n[queries]\npool_size = 4\n')
    s = load_settings(path, environ={"MQTT_BROKER_HOST": "from-env"})
    assert (s.mqtt.host, s.mqtt.port, s.queries.pool_size) == ("from-env", 1999, 4)
    assert s.database.path == "mqtt_data.db"


@pytest.mark.parametrize("text, named", [
    ('[mqtt]\nprot = 1883\n', "'mqtt.prot' (did you mean 'mqtt.port'?)"),
    ('[databse]\npath = "x"\n', "'databse' (did you mean 'database'?)"),
    ('[mqtt]\nport = "1883"\n', "mqtt.port must be a whole number"),
    ('[mqtt]\nport = 70000\n', "mqtt.port must be at most 65535"),
    ('[queries]\npool_size = 0\n', "queries.pool_size must be at least 1"),
    ('[logging]\nlevel = "LOUD"\n', "logging.level must be one of"),
    ('[mqtt]\nclient_id = " "\n', "mqtt.client_id must not be empty"),
    ('[mqtt]\nsession_expiry = 60\n', "mqtt.session_expiry must be at least 3600"),
    ('[mqtt\n', "is not valid TOML"),
    ('[site]\ntimezone = "India"\n', "site.timezone must be an IANA time zone name such as Asia/Kolkata"),
    ('[site]\ntimezone = "../../etc/passwd"\n', "site.timezone must be an IANA time zone name"),
])
def test_bad_settings_stop_start_up_naming_the_key(tmp_path, text, named):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ={})
    assert named in str(err.value)


@pytest.mark.parametrize("variable, value, named", [
    ("MQTT_BROKER_PORT", "eighteen", "MQTT_BROKER_PORT='eighteen': expected a whole number"),
    ("MQTT_BROKER_PORT", "70000", "mqtt.port must be at most 65535"),
    ("MQTT_TLS", "maybe", "MQTT_TLS='maybe': expected true or false"),
    ("MQTT_TLS_CA_FILE", "/nonexistent/ca.pem", "mqtt.tls_* settings are set but mqtt.tls is false"),
    ("LOG_LEVEL", "chatty", "logging.level must be one of"),
    ("MQTT_CLIENT_ID", " ", "mqtt.client_id must not be empty"),
    ("SITE_TIMEZONE", "Mars/Olympus_Mons", "site.timezone must be an IANA time zone name"),
])
def test_bad_environment_values_name_the_variable_or_key(variable, value, named):
    with pytest.raises(SettingsError) as err:
        load_settings(environ={variable: value})
    assert named in str(err.value)


def test_an_empty_variable_is_unset_and_never_overrides_the_settings_file(tmp_path):
    """An env file's `MQTT_USERNAME=` line keeps the file's user name; with TLS on and no port
    set anywhere but an empty MQTT_BROKER_PORT=, the port is TLS's."""
    path = tmp_path / "site.toml"
    path.write_text('[mqtt]\nusername = "site-a"\nclient_id = "svc-a"\n')
    s = load_settings(path, environ={"MQTT_USERNAME": "", "MQTT_PASSWORD": "", "MQTT_CLIENT_ID": "",
                                     "MQTT_BROKER_PORT": "", "MQTT_TLS": "true"})
    assert (s.mqtt.username, s.mqtt.password, s.mqtt.client_id) == ("site-a", "", "svc-a")
    assert s.mqtt.port == 8883


def test_a_missing_config_file_is_reported(tmp_path):
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_a_password_in_a_settings_file_is_refused_and_the_environment_is_the_way(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[mqtt]\nusername = "svc"\npassword = "hunter2"\n')
    with pytest.raises(SettingsError, match="secrets come from the environment only .MQTT_PASSWORD"):
        load_settings(path, environ={})
    path.write_text('[mqtt]\nusername = "svc"\n')
    settings = load_settings(path, environ={"MQTT_PASSWORD": "hunter2"})
    assert settings.mqtt.password == "hunter2" and "hunter2" not in repr(settings)


def test_a_database_url_with_a_password_belongs_in_the_environment_and_never_in_logs(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[database]\nurl = "postgresql://mqtt:hunter2@db.internal/mqtt"\n')
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        load_settings(path, environ={})
    path.write_text('[database]\nurl = "postgresql://mqtt@db.internal/mqtt"\n')  # .pgpass or trust
    assert load_settings(path, environ={}).database.url == "postgresql://mqtt@db.internal/mqtt"
    settings = load_settings(environ={"DATABASE_URL": "postgresql://mqtt:hunter2@db.internal/mqtt"})
    assert "hunter2" not in repr(settings)
    assert describe_url(settings.database.url) == "postgresql://mqtt:***@db.internal/mqtt"


NUMERIC = [(section, key) for section in SECTIONS for key, value in keys(section).items()
           if isinstance(value, Integer)]


@pytest.mark.parametrize("section, key", NUMERIC)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan"])
def test_nan_and_infinity_are_bad_values_for_every_numeric_setting(tmp_path, section, key, value):
    """TOML has nan and inf. nan passes every comparison, inf would disable a limit: both are refused."""
    path = tmp_path / "bad.toml"
    path.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ={})
    assert f"{section}.{key} must be a" in str(err.value)


@pytest.mark.parametrize("section, key", NUMERIC)
def test_a_huge_number_is_a_bad_value_for_every_numeric_setting(tmp_path, section, key):
    """Not one that overflows later (e.g. in a PRAGMA)."""
    path = tmp_path / "bad.toml"
    path.write_text(f"[{section}]\n{key} = {2**63}\n")
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ={})
    assert f"{section}.{key} must be at most" in str(err.value)


def test_every_key_has_a_type_and_every_numeric_one_is_checked_as_its_field_says():
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name == "by_type":  # a key per device type, {type}_stale_after or {type}_days
                suffix, value, _ = PER_TYPE[section]
                assert {name: keys(section)[f"{name}_{suffix}"] for name in BUILTIN_TYPES} == \
                    {name: value for name in BUILTIN_TYPES}
                assert isinstance(value, Integer), section  # numeric: checked like the rest
                continue
            value = keys(section)[f.name]
            assert isinstance(value, Integer) == (f.type in ("int", "float", "float | str")), f"{section}.{f.name}"


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[mqtt]\nprot = 1883\nkeepalive = 1\n[queries]\npool_size = "two"\n[logging]\nlevel = "LOUD"\n')
    with pytest.raises(SettingsError) as err:
        load_settings(path, environ={"MQTT_TLS": "maybe"})
    message = str(err.value)
    assert message.startswith("5 problems:")
    for named in ("'mqtt.prot' (did you mean 'mqtt.port'?)", "mqtt.keepalive must be at least 5",
                  "queries.pool_size must be a whole number", "logging.level must be one of",
                  "MQTT_TLS='maybe': expected true or false"):
        assert named in message


def test_a_renamed_key_still_works_with_a_warning_and_twice_is_an_error(tmp_path):
    """An upgrade never breaks a deployed settings file: database.commit_interval became commit_linger."""
    path = tmp_path / "old.toml"
    path.write_text("[database]\ncommit_interval = 0.05\n")
    settings = load_settings(path, environ={})
    assert settings.database.commit_linger == 0.05
    assert settings.warnings == (f"database.commit_interval in {path} was renamed database.commit_linger in "
                                 "version 1.2.0; it still works, but please rename it",)
    assert load_settings(environ={}).warnings == ()
    path.write_text("[database]\ncommit_interval = 0.05\ncommit_linger = 0.02\n")
    with pytest.raises(SettingsError, match="the same setting twice"):
        load_settings(path, environ={})
    path.write_text("[database]\ncommit_interval = 10\n")  # the new key's checks apply
    with pytest.raises(SettingsError, match="database.commit_linger must be at most 5"):
        load_settings(path, environ={})


def test_system_py_logs_a_renamed_key_and_check_config_shows_it(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(f'[database]\ncommit_interval = 0.05\npath = "{tmp_path / "x.db"}"\n'
                    '[mqtt]\nport = 1\nconnect_timeout = 1\n')
    check = subprocess.run([sys.executable, "system.py", "--config", str(path), "--check-config"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert "WARNING settings: database.commit_interval" in check.stdout, check.stdout + check.stderr


@pytest.mark.parametrize("variable", ["MQTT_BROKER_PORT"])
@pytest.mark.parametrize("value", ["nan", "inf", "1e999"])
def test_nan_and_infinity_from_the_environment_are_refused(variable, value):
    with pytest.raises(SettingsError, match=variable):
        load_settings(environ={variable: value})


def test_system_py_exits_2_naming_the_key_and_check_config_says_failed(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[database]\nbusy_timeout = nan\n")
    run = subprocess.run([sys.executable, "system.py", "--config", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "database.busy_timeout must be a finite number" in run.stderr
    check = subprocess.run([sys.executable, "system.py", "--config", str(path), "--check-config"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 2 and "FAILED  settings: database.busy_timeout" in check.stderr


def test_settings_toml_gives_every_number_its_range_as_the_code_checks_it():
    """settings.toml is where operators look: each numeric key's line says [least–most]."""
    def shown(x):
        return str(int(x)) if float(x).is_integer() else repr(float(x))

    section, missing = None, []
    for line in (ROOT / "settings.toml").read_text().splitlines():
        if m := re.match(r"\[(\w+)\]", line):
            section = m.group(1)
        elif (m := re.match(r"(\w+) = ", line)) and section:
            value = keys(section)[m.group(1)]
            if isinstance(value, Integer) and f"[{shown(value.minimum)}–{shown(value.maximum)}]" not in line:
                missing.append(f"{section}.{m.group(1)}")
    assert missing == []
