#!/usr/bin/env bash
# Quick start, command two: every test (unit, ansible-lint, collection build, molecule
# scenarios, lab integration). Run as root on Debian 12; CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/pytest -p no:cacheprovider -ra --durations=30 "${@:-tests}"
