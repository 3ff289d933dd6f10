#!/usr/bin/env bash
# Makes .venv with the pinned requirements (with --dev: also the test requirements), and
# installs what a fresh Debian/Ubuntu machine lacks: Python 3.11+ with venv, Mosquitto, its
# command-line clients (mosquitto_pub, mosquitto_sub) and sqlite3, which the README uses.
# Safe to run again: it only does what is missing. One line per thing it installs; on a failure,
# the failing command's whole output.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
log=$(mktemp); trap 'rm -f "$log"' EXIT
quietly() {  # run "$@" with its output kept aside; show it all if it fails
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    echo "bootstrap: failed: $*" >&2
    exit 1
  fi
}
apt_updated=""
apt_install() {
  echo "bootstrap: installing $* (apt)"
  [ -n "$apt_updated" ] || { quietly $SUDO apt-get update; apt_updated=1; }
  quietly $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

python=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null &&
     "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python="$candidate"; break
  fi
done
if [ -z "$python" ]; then
  apt_install python3.11 python3.11-venv
  python=python3.11
fi

if [ ! -x .venv/bin/python ]; then
  # Debian and Ubuntu ship venv without ensurepip: install their venv package, then try again.
  if ! "$python" -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    "$python" -c 'import sys; print(f"python3.{sys.version_info[1]}-venv")' >"$log"
    apt_install "$(cat "$log")" python3-venv
    quietly "$python" -m venv .venv
  fi
  echo "bootstrap: made .venv ($("$python" --version))"
fi
requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements="requirements-dev.txt"
pip=(.venv/bin/python -m pip install --disable-pip-version-check -r "$requirements")
if ! plan=$("${pip[@]}" --dry-run 2>&1); then
  echo "$plan" >&2
  echo "bootstrap: failed: pip cannot install $requirements (is the network or the package index reachable?)" >&2
  exit 1
fi
if grep -q '^Would install' <<<"$plan"; then
  echo "bootstrap: installing the Python packages of $requirements into .venv"
  quietly "${pip[@]}" -q
fi

missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
command -v sqlite3 >/dev/null || missing+=(sqlite3)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
  if [[ " ${missing[*]} " == *" mosquitto "* ]] && [ -d /etc/mosquitto/conf.d ]; then
    # Our recommended broker settings for the broker apt just installed.
    echo "bootstrap: adding deploy/mosquitto/mqtt-client.conf to /etc/mosquitto/conf.d"
    $SUDO cp deploy/mosquitto/mqtt-client.conf /etc/mosquitto/conf.d/mqtt-client.conf
    $SUDO systemctl restart mosquitto >/dev/null 2>&1 || true
  fi
fi
