#!/usr/bin/env bash
# From a fresh clone to a running service on the default settings (settings.toml):
# installs what is missing, makes sure a broker listens on localhost:1883, starts the service.
# Ctrl+C stops it cleanly. Extra arguments go to system.py (e.g. --config site.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  echo "run: no broker on localhost:1883; starting Mosquitto with deploy/mosquitto/mqtt-client.conf"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  if ! $SUDO systemctl start mosquitto 2>/dev/null; then
    # No systemd here: a broker of our own, its persistence file in .broker/.
    mkdir -p .broker
    { cat deploy/mosquitto/mqtt-client.conf; echo "persistence_location $PWD/.broker/"; echo "user $(id -un)"; } \
      > .broker/mosquitto.conf
    "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -d -c .broker/mosquitto.conf
  fi
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break; sleep 0.1; done
fi
exec .venv/bin/python system.py "$@"
