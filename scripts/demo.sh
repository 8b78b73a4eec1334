#!/usr/bin/env bash
# The main job: two simulated hosts, the agent on each, goal states pushed, traffic shown.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ACA_VENV:-/opt/aca-venv}"
bash scripts/setup.sh
exec "$VENV/bin/python" -m agent.sandbox.demo "$@"
