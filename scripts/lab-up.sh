#!/usr/bin/env bash
# Quick start, command one: install what is needed, build, bring up the three-node lab cluster
# with cluster.yml, and show its nodes. Run as root on Debian 12. Tear down with:
#   .venv/bin/ansible-playbook -i inventory/lab reset.yml
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ansible-playbook -i inventory/lab cluster.yml "$@"
echo
apiary lab get nodes
