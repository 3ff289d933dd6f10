#!/usr/bin/env bash
# Moves a machine from the original program (mqtt_client.py in /home/ubuntu/mqtt-client, run by
# /etc/systemd/system/mqtt-client.service with Environment= lines) to this service. Run it as root
# from a copy of this repository that is NOT the original's folder:
#
#   sudo deploy/migrate-from-original.sh [--with-broker] [ORIGINAL_DIR]   (default /home/ubuntu/mqtt-client)
#
# 1. The old unit's Environment= lines become /etc/mqtt-client/mqtt-client.env (unless that file
#    already sets something): MQTT_* and LOG_LEVEL carry over; DATABASE_PATH and LOG_FILE, which
#    point into the old folder, do not (the data moves to /var/lib/mqtt-client).
# 2. The old service is stopped and disabled, before anything else takes its broker session; its
#    unit is kept as /etc/mqtt-client/original.service.
# 3. deploy/install.sh --no-start installs this service (in place of that unit).
# 4. The old mqtt_data.db is copied in with SQLite's backup API; the service upgrades the copy to
#    its schema when it starts. The old folder and its database are left exactly as they were.
# 5. The service starts under the old MQTT_CLIENT_ID, so it takes over the old broker session: what
#    the broker kept for the old program while it was stopped is delivered to the new service.
set -euo pipefail

NAME=mqtt-client
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ORIGINAL=/home/ubuntu/mqtt-client INSTALL_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --with-broker) INSTALL_ARGS+=(--with-broker) ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "migrate-from-original.sh: unknown option $1" >&2; exit 2 ;;
    *) ORIGINAL="${1%/}" ;;
  esac
  shift
done
ETC=/etc/$NAME DATA=/var/lib/$NAME UNIT=/etc/systemd/system/$NAME.service
KEPT_UNIT=$ETC/original.service
say() { echo "migrate: $*"; }
die() { echo "migrate: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run it as root (sudo)"
case "$SRC/" in "$ORIGINAL"/*) die "this copy of the service is inside $ORIGINAL: clone it elsewhere (e.g. ~/mqtt-service)" ;; esac
[ -d "$ORIGINAL" ] || die "no original program in $ORIGINAL (give its folder as the argument)"

# The old unit: the one in place, or the copy a previous, interrupted run kept.
old_unit=""
if [ -f "$KEPT_UNIT" ]; then
  old_unit=$KEPT_UNIT
elif [ -f "$UNIT" ] && grep -q 'mqtt_client\.py' "$UNIT"; then
  install -d -m 0755 "$ETC"
  install -m 0600 "$UNIT" "$KEPT_UNIT"
  old_unit=$KEPT_UNIT
  say "kept the original unit as $KEPT_UNIT"
else
  say "no unit of the original program in $UNIT: no Environment= lines to carry over"
fi

# What the old unit set, one KEY=VALUE per line (systemd's quoting undone by shlex).
old_env() {
  python3 - "$1" <<'EOF'
import shlex, sys
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.strip()
    if line.startswith("Environment="):
        for item in shlex.split(line[len("Environment="):]):
            if "=" in item:
                print(item)
EOF
}
database="$ORIGINAL/mqtt_data.db"
if [ -n "$old_unit" ]; then
  carried=() workdir=$ORIGINAL
  dir=$(sed -n 's/^WorkingDirectory=//p' "$old_unit" | tail -1); [ -n "$dir" ] && workdir=$dir
  while IFS= read -r item; do
    case "${item%%=*}" in
      DATABASE_PATH) path=${item#*=}; [ "${path#/}" = "$path" ] && path="$workdir/$path"; database=$path ;;
      LOG_FILE) ;;
      *) carried+=("$item") ;;
    esac
  done < <(old_env "$old_unit")
  if [ -f "$ETC/$NAME.env" ] && grep -qvE '^[[:space:]]*(#|$)' "$ETC/$NAME.env"; then
    say "$ETC/$NAME.env already sets variables: left as it is (the old unit set: ${carried[*]%%=*})"
  else
    install -d -m 0755 "$ETC"
    { echo "# Carried over from the original program's unit ($KEPT_UNIT) by migrate-from-original.sh."
      echo "# An empty value counts as unset. See /opt/$NAME/deploy/mqtt-client.env.example for the rest."
      printf '%s\n' "${carried[@]}"; } > "$ETC/$NAME.env.new"
    chmod 0600 "$ETC/$NAME.env.new" && mv "$ETC/$NAME.env.new" "$ETC/$NAME.env"
    say "wrote $ETC/$NAME.env: ${carried[*]%%=*}"
  fi
fi

# Stop the old program before the new one can take its session or its readings.
if systemctl is-active --quiet "$NAME.service" && [ "$old_unit" = "$KEPT_UNIT" ] && grep -q 'mqtt_client\.py' "$UNIT"; then
  systemctl disable --now "$NAME.service"
  say "stopped and disabled the original program"
fi

"$SRC/deploy/install.sh" --no-start "${INSTALL_ARGS[@]}"

if [ -e "$DATA/mqtt_data.db" ]; then
  say "$DATA/mqtt_data.db exists already: not importing $database (move it aside and run again to import)"
elif [ -f "$database" ]; then
  sqlite3 "$database" ".backup '$DATA/mqtt_data.db'"
  chown "$NAME:$NAME" "$DATA/mqtt_data.db" && chmod 0640 "$DATA/mqtt_data.db"
  say "imported $database ($(du -h "$DATA/mqtt_data.db" | cut -f1)); the service upgrades it when it starts"
else
  say "no database at $database: the service starts with an empty one"
fi

systemctl start "$NAME.service"
say "started. Status: systemctl status $NAME   Logs: journalctl -u $NAME -f"
say "the original program's folder $ORIGINAL is untouched; remove it once you are satisfied"
