#!/usr/bin/env bash
# The cluster failover tests: start the cluster profile, run tests/faults/test_cluster.py, stop it.
#
#   bash scripts/cluster/test.sh [pytest args...]          the representative subset (leader killed)
#   DISPYTCH_CLUSTER_FULL=1 bash scripts/cluster/test.sh   every scenario (follower, two leaders,
#                                                          partition too)
#
# DISPYTCH_CLUSTER lists the backends (default kafka,rabbitmq,nats,redis_streams); only their
# clusters are started. DISPYTCH_FAULT_RESULTS=FILE collects the numbers
# (python scripts/fault_report.py FILE renders them). The clusters are stopped at the end unless
# CLUSTER_KEEP=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export DISPYTCH_CLUSTER="${DISPYTCH_CLUSTER-kafka,rabbitmq,nats,redis_streams}"
services="${DISPYTCH_CLUSTER//,/ }"
services="${services//redis_streams/redis}"
if [ "${CLUSTER_KEEP:-0}" != 1 ]; then
  # shellcheck disable=SC2086
  trap 'bash scripts/cluster/cluster.sh down '"$services"' >/dev/null 2>&1 || true' EXIT
fi
start=$SECONDS
# shellcheck disable=SC2086
bash scripts/cluster/cluster.sh up $services
rc=0
python -m pytest tests/faults/test_cluster.py "$@" || rc=$?
echo "cluster tests: $((SECONDS - start))s (cluster start-up included)"
exit "$rc"
