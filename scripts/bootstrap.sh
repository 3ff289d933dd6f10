#!/usr/bin/env bash
# Makes .venv with the pinned requirements (with --dev: also the test requirements), and
# installs what a fresh Debian/Ubuntu machine lacks: Python 3.11+ with venv, and Mosquitto.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_install() { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "$@"; }

python=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python="$candidate"; break
  fi
done
if [ -z "$python" ]; then
  echo "bootstrap: installing Python 3.11 (this service needs 3.11 or newer)"
  apt_install python3.11 python3.11-venv
  python=python3.11
fi

if [ ! -x .venv/bin/python ]; then
  if ! "$python" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    apt_install "$(basename "$python")-venv" || apt_install python3-venv
    "$python" -m venv .venv
  fi
fi
requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements="requirements-dev.txt"
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$requirements"

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  echo "bootstrap: installing Mosquitto"
  apt_install mosquitto
  # Our recommended broker settings (deploy/mosquitto/mqtt-client.conf) for the broker apt just installed.
  if [ -d /etc/mosquitto/conf.d ]; then
    $SUDO cp deploy/mosquitto/mqtt-client.conf /etc/mosquitto/conf.d/mqtt-client.conf
    $SUDO systemctl restart mosquitto 2>/dev/null || true
  fi
fi
