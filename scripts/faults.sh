#!/usr/bin/env bash
# The fault suite (tests/faults) at a chosen size, then its results as a Markdown table.
#
#   bash scripts/faults.sh [EVENTS] [pytest args...]     e.g.  bash scripts/faults.sh 50000 -x
#
# EVENTS per scenario (default 2000) sets DISPYTCH_FAULT_EVENTS; the backlog scenario's size is
# DISPYTCH_FAULT_BACKLOG (default 20000; the larger run uses 200000). Backends: DISPYTCH_BROKERS
# (default kafka,rabbitmq,nats,redis_streams), their brokers started with scripts/brokers.sh if
# they are not running. The broker-restart scenarios restart them (data kept): do not run this
# while others use them, or point it at private brokers (see tests/faults/conftest.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export DISPYTCH_FAULT_EVENTS="${1:-2000}"
[ "$#" -gt 0 ] && shift
export DISPYTCH_BROKERS="${DISPYTCH_BROKERS-kafka,rabbitmq,nats,redis_streams}"
services="${DISPYTCH_BROKERS//,/ }"
bash scripts/brokers.sh up ${services//redis_streams/redis}
results="$(mktemp /tmp/dispytch-faults.XXXXXX)"
export DISPYTCH_FAULT_RESULTS="$results"
rc=0
python -m pytest tests/faults -m fault -p no:cacheprovider "$@" || rc=$?
python scripts/fault_report.py "$results"
echo "(results: $results)"
exit "$rc"
