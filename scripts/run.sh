#!/usr/bin/env bash
# From a fresh clone to a running service on the default settings (settings.toml):
# installs what is missing, makes sure a broker listens on localhost:1883, starts the service.
# Ctrl+C stops it cleanly (and a broker this script started for it). Extra arguments go to
# system.py (e.g. --config site.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
listening() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }
if listening; then
  exec .venv/bin/python system.py "$@"
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if $SUDO systemctl start mosquitto 2>/dev/null; then
  echo "run: started the system's Mosquitto (systemctl); it keeps running after the service stops"
  for _ in $(seq 50); do listening && break; sleep 0.1; done
  exec .venv/bin/python system.py "$@"
fi
# No systemd here: a broker of our own for this run, with our recommended settings and its
# persistence file in .broker/. It is in a session of its own, so that Ctrl+C reaches the service
# (which stops cleanly, acknowledging what it has committed) before the broker, stopped after it.
mkdir -p .broker
{ cat deploy/mosquitto/mqtt-client.conf; echo "persistence_location $PWD/.broker/"; echo "user $(id -un)"; } \
  > .broker/mosquitto.conf
setsid "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c .broker/mosquitto.conf >.broker/mosquitto.log 2>&1 &
broker=$!
trap 'kill "$broker" 2>/dev/null; wait "$broker" 2>/dev/null' EXIT
for _ in $(seq 50); do listening && break; sleep 0.1; done
listening || { cat .broker/mosquitto.log >&2; echo "run: Mosquitto did not start" >&2; exit 1; }
echo "run: started Mosquitto on localhost:1883 for this run (pid $broker); it stops with the service"
.venv/bin/python system.py "$@" &
service=$!
trap 'kill -TERM "$service" 2>/dev/null' INT TERM  # Ctrl+C or a stop: the service stops cleanly
status=0
wait "$service" || status=$?
if kill -0 "$service" 2>/dev/null; then  # the wait was cut short by the signal: wait for the stop
  status=0
  wait "$service" || status=$?
fi
exit "$status"
