#!/usr/bin/env bash
# Run the whole suite: lint, unit tests, then real OVS / namespaces / broker integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ACA_VENV:-/opt/aca-venv}"
bash scripts/setup.sh
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
bash scripts/sanitize.sh   # the C DHCP engine under ASan+UBSan, then a bounded fuzz run (≤ 1 min)
exec "$VENV/bin/python" -m pytest -ra "$@"
