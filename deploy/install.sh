#!/usr/bin/env bash
# Installs the service on Debian 12 / Ubuntu 22.04+ (run as root from a copy of this repository),
# or upgrades it in place: run it again after `git pull`. Safe to repeat: it only creates what is
# missing, replaces the code and the unit, and never touches your settings or data (in the env file
# it only comments out lines that repeat a default, which older releases wrote).
#
#   sudo deploy/install.sh                 install or upgrade, enable and (re)start the service
#   sudo deploy/install.sh --with-broker   also install Mosquitto with deploy/mosquitto/mqtt-client.conf
#   sudo deploy/install.sh --no-start      install or upgrade and enable, but leave the service stopped
#   sudo deploy/install.sh --uninstall     remove the code and the unit; keep config, data, logs
#   sudo deploy/install.sh --uninstall --purge   ... and remove those and the user too
#   deploy/install.sh --dry-run [...]      print every action, change nothing
#   deploy/install.sh --root DIR [...]     install into DIR instead of / (for tests): no apt, no systemctl
#
# Layout: user and group mqtt-client; code and venv in /opt/mqtt-client; settings in
# /etc/mqtt-client/settings.toml (only what differs from the defaults) and secrets in
# /etc/mqtt-client/mqtt-client.env (mode 0600); database, backups and archive in
# /var/lib/mqtt-client; log file in /var/log/mqtt-client; unit mqtt-client.service.
set -euo pipefail

NAME=mqtt-client
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="" DRY=0 WITH_BROKER=0 UNINSTALL=0 PURGE=0 START=1

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --with-broker) WITH_BROKER=1 ;;
    --no-start) START=0 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge) PURGE=1 ;;
    --dry-run) DRY=1 ;;
    --root) ROOT="$(realpath -m "${2:?--root needs a directory}")"; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
  esac
  shift
done
if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
  echo "install.sh: --purge goes with --uninstall" >&2; exit 2
fi

OPT="$ROOT/opt/$NAME" ETC="$ROOT/etc/$NAME" DATA="$ROOT/var/lib/$NAME" LOGS="$ROOT/var/log/$NAME"
UNIT="$ROOT/etc/systemd/system/$NAME.service"
BROKER_CONF="$ROOT/etc/mosquitto/conf.d/$NAME.conf"

run() {  # every change goes through here: printed, and skipped by --dry-run
  echo "+ $*"
  [ "$DRY" = 1 ] || "$@"
}
say() { echo "install.sh: $*"; }
# systemctl and apt only on the real system, with systemd running (not in a container or --root)
on_system() { [ -z "$ROOT" ] && { [ "$DRY" = 1 ] || [ -d /run/systemd/system ]; }; }
has_user() { grep -q "^$NAME:" "$ROOT/etc/passwd" 2>/dev/null; }
# numeric ids: under --root the user exists only in DIR/etc/passwd, unknown to install and chown
uid() { awk -F: -v n="$NAME" '$1 == n { print $3 }' "$ROOT/etc/passwd" 2>/dev/null | grep . || echo "$NAME"; }
gid() { awk -F: -v n="$NAME" '$1 == n { print $3 }' "$ROOT/etc/group" 2>/dev/null | grep . || echo "$NAME"; }
root_opt=(); [ -n "$ROOT" ] && root_opt=(--root "$ROOT")

if [ "$DRY" = 0 ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run it as root (sudo), or with --dry-run to see what it would do" >&2; exit 1
fi

uninstall_service() {
  if on_system; then
    run systemctl disable --now "$NAME.service" || true
  fi
  run rm -f "$UNIT"
  on_system && run systemctl daemon-reload
  run rm -rf "$OPT"
  if [ -f "$BROKER_CONF" ]; then
    run rm -f "$BROKER_CONF"
    on_system && run systemctl restart mosquitto.service
  fi
  if [ "$PURGE" = 1 ]; then
    run rm -rf "$ETC" "$DATA" "$LOGS"
    if has_user || [ "$DRY" = 1 ]; then
      run userdel "${root_opt[@]}" "$NAME"
    fi
    if grep -q "^$NAME:" "$ROOT/etc/group" 2>/dev/null; then
      run groupdel "${root_opt[@]}" "$NAME"
    fi
    say "removed everything, data included"
  else
    say "removed the service; kept $ETC, $DATA (database, backups, archive) and $LOGS"
  fi
}

python_for_venv() {
  local candidate
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
       "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
}

# Releases before 2026-12-05 wrote an env file that set the defaults (MQTT_BROKER_PORT=1883,
# MQTT_USERNAME=, ...), which overrode settings.toml and kept MQTT_TLS=true on port 1883. Those
# exact lines, and only those, become comments: the service behaves the same without them.
OLD_DEFAULTS='^(MQTT_BROKER_HOST=localhost|MQTT_BROKER_PORT=1883|MQTT_CLIENT_ID=mqtt_client_1|MQTT_USERNAME=|MQTT_PASSWORD=)$'
quiet_defaults() {
  if grep -qE "$OLD_DEFAULTS" "$1"; then
    say "commenting out lines of $1 that only repeat a default: $(grep -E "$OLD_DEFAULTS" "$1" | tr '\n' ' ')"
    run sed -i -E "s/$OLD_DEFAULTS/# \\1/" "$1"
  fi
}

install_service() {
  # 1. Python 3.11+ with venv, and Mosquitto when asked for
  local python packages=()
  python="$(python_for_venv)"
  [ -z "$python" ] && packages+=(python3 python3-venv)
  # Mosquitto when asked for, and the operator's tools that deploy/README.md uses
  local wanted=(sqlite3 mosquitto-clients) package
  [ "$WITH_BROKER" = 1 ] && wanted+=(mosquitto)
  for package in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || packages+=("$package")
  done
  if [ ${#packages[@]} -gt 0 ]; then
    if [ -n "$ROOT" ]; then
      say "skipped (--root): apt-get install ${packages[*]}"
    else
      run apt-get update -qq
      run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
    fi
    python="$(python_for_venv)"
  fi
  if [ -z "$python" ]; then
    [ "$DRY" = 1 ] || { echo "install.sh: no Python 3.11+ with venv found" >&2; exit 1; }
    python=python3
  fi

  # 2. the service's own user: no login, no home of its own beyond its data directory
  if ! has_user; then
    run useradd "${root_opt[@]}" --system --user-group --home-dir "/var/lib/$NAME" --no-create-home \
      --shell /usr/sbin/nologin "$NAME"
  fi

  # 3. the code (root's: the service cannot change it) and its venv, compiled ahead of time
  #    because the unit's ProtectSystem=strict keeps the service from writing __pycache__
  run mkdir -p "$OPT"
  run rm -rf "$OPT/actors" "$OPT/scripts" "$OPT/deploy"
  run cp -r "$SRC/actors" "$SRC/scripts" "$SRC/deploy" "$SRC/system.py" "$SRC/settings.toml" \
    "$SRC/requirements.txt" "$SRC/README.md" "$OPT/"
  run find "$OPT" -name __pycache__ -prune -exec rm -rf {} +
  [ -x "$OPT/.venv/bin/python" ] || run "$python" -m venv "$OPT/.venv"
  run "$OPT/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$OPT/requirements.txt"
  run "$OPT/.venv/bin/python" -m compileall -q "$OPT/actors" "$OPT/system.py" "$OPT/scripts"

  # 4. settings and secrets: created once, never overwritten
  run install -d -m 0755 "$ETC"
  if [ ! -e "$ETC/settings.toml" ]; then
    run install -m 0640 -g "$(gid)" "$SRC/deploy/settings.install.toml" "$ETC/settings.toml"
  fi
  if [ ! -e "$ETC/$NAME.env" ]; then
    run install -m 0600 "$SRC/deploy/mqtt-client.env.example" "$ETC/$NAME.env"
  else
    quiet_defaults "$ETC/$NAME.env"
  fi

  # 5. data and logs, the only places the service may write
  run install -d -m 0750 -o "$(uid)" -g "$(gid)" "$DATA" "$LOGS"

  # 6. the broker, when asked for: Debian's Mosquitto with our settings as a drop-in
  if [ "$WITH_BROKER" = 1 ]; then
    run install -D -m 0644 "$SRC/deploy/mosquitto/mqtt-client.conf" "$BROKER_CONF"
    if on_system; then
      run systemctl enable mosquitto.service
      run systemctl restart mosquitto.service
    fi
  fi

  # 7. the unit: enabled at boot, and (re)started now so an upgrade takes effect
  run install -D -m 0644 "$SRC/deploy/mqtt-client.service" "$UNIT"
  if on_system; then
    run systemctl daemon-reload
    run systemctl enable "$NAME.service"
    # --no-block: a notify service is "started" once the broker acknowledges it, which may
    # take a while when the broker is not up yet; it keeps trying on its own.
    if [ "$START" = 1 ]; then
      run systemctl restart --no-block "$NAME.service"
      say "installed. Status: systemctl status $NAME   Logs: journalctl -u $NAME -f"
    else
      run systemctl stop "$NAME.service"
      say "installed, not started (--no-start): systemctl start $NAME"
    fi
  else
    say "installed into ${ROOT:-/}; systemd is not running there, so nothing was enabled or started"
  fi
  say "broker address and credentials: $ETC/$NAME.env; other settings: $ETC/settings.toml"
}

if [ "$UNINSTALL" = 1 ]; then uninstall_service; else install_service; fi
