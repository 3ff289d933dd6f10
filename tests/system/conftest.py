"""The system checks boot a Debian 12 machine under systemd-nspawn for each test: slow (about ten
minutes in all), and only as root. They run with MQTT_CLIENT_SYSTEM_TESTS=1 (see the README's
Running the tests); otherwise they are skipped."""

import os
import subprocess
from pathlib import Path

import pytest

from machine import Machine, available

PROJECT = Path(__file__).resolve().parents[2]
# The release an upgrade starts from: the last one before the guide was made executable.
PREVIOUS_RELEASE = os.environ.get("PREVIOUS_RELEASE", "6ed28b5")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MQTT_CLIENT_SYSTEM_TESTS") == "1":
        reason = available()
    else:
        reason = "a system check: MQTT_CLIENT_SYSTEM_TESTS=1 scripts/test.sh tests/system (root, ~10 min)"
    if reason:
        for item in items:
            if "tests/system/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def machine(tmp_path_factory):
    work = tmp_path_factory.mktemp("machine", numbered=True)
    os.chmod(work, 0o755)
    commit = subprocess.run(["git", "-C", str(PROJECT), "rev-parse", "--verify", "-q", PREVIOUS_RELEASE],
                            capture_output=True, text=True).stdout.strip()
    box = Machine(PROJECT, work, releases=(commit,) if commit else ())
    yield box  # not booted yet: a test may change the root first
    box.destroy()
