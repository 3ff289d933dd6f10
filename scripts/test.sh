#!/usr/bin/env bash
# The whole test suite: unit, actor-level and integration tests. The tests start their own
# Mosquitto processes on free ports; nothing else needs to be running.
# Extra arguments go to pytest: a file or directory narrows the run to it (scripts/test.sh
# tests/unit), and so do options (-k power, -x, -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --dev
paths=()
for arg in "$@"; do
  case "$arg" in -*) ;; *) [ -e "${arg%%::*}" ] && paths+=("$arg") ;; esac
done
if [ ${#paths[@]} -eq 0 ]; then
  set -- tests "$@"
fi
exec .venv/bin/python -m pytest -c tests/pytest.ini "$@"
