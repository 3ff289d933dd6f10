#!/usr/bin/env bash
# The whole test suite: unit, actor-level and integration tests. The tests start their own
# Mosquitto processes on free ports; nothing else needs to be running.
# Extra arguments go to pytest (e.g. -k power, -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --dev
exec .venv/bin/python -m pytest -c tests/pytest.ini tests "$@"
