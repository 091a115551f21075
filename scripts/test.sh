#!/usr/bin/env bash
# The whole test suite: start the local brokers (installing what is missing), then run pytest
# against memory and every live broker. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BROKERS="${DISPYTCH_BROKERS-kafka,rabbitmq,redis,nats}"
if [ -n "$BROKERS" ]; then
  bash scripts/brokers.sh up ${BROKERS//,/ }
fi
export DISPYTCH_BROKERS="$BROKERS"
exec python -m pytest "$@"
