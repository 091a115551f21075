#!/usr/bin/env bash
# The whole test suite on any machine with Python 3.11+: installs the dev dependencies when one
# is missing (pip install -e ".[dev]"), the Debian tools the tests use (chromium, tmux, prometheus)
# and the local brokers, starts the brokers, then runs pytest against memory and every live broker.
# Extra arguments go to pytest.
#
# DISPYTCH_BROKERS lists backend names (comma-separated); several backends can share one broker
# (redis and redis_streams both need the redis server, nats and nats_core the nats server), so the list is translated to broker names,
# without duplicates, for brokers.sh. The name "secure" starts the secured brokers
# (`brokers.sh --profile secure`, TLS + authentication) for tests/security.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/python.sh
ensure_python dev pytest pytest_asyncio pytest_timeout hypothesis aiokafka aio_pika redis nats \
  msgpack fastapi uvicorn httpx yaml mkdocs material mkdocstrings_handlers.python \
  prometheus_client opentelemetry.sdk cramjam
bash scripts/brokers.sh tools
BACKENDS="${DISPYTCH_BROKERS-kafka,rabbitmq,redis,redis_streams,nats,nats_core,secure}"

broker_of() { # backend name -> broker name for brokers.sh
  case "$1" in
    redis_streams) printf 'redis' ;;
    nats_core) printf 'nats' ;;
    *) printf '%s' "$1" ;;
  esac
}

SERVERS=()
SECURE=0
IFS=',' read -r -a NAMES <<< "$BACKENDS"
for name in "${NAMES[@]}"; do
  name="${name// /}"
  [ -n "$name" ] || continue
  if [ "$name" = secure ]; then SECURE=1; continue; fi
  server="$(broker_of "$name")"
  case " ${SERVERS[*]-} " in *" $server "*) ;; *) SERVERS+=("$server") ;; esac
done
if [ "${#SERVERS[@]}" -gt 0 ] && [ "$SECURE" -eq 1 ]; then
  # Both profiles start at once (the secure one takes about 20 s, Kafka's JVM the most).
  bash scripts/brokers.sh up "${SERVERS[@]}" &
  default_up=$!
  secure_rc=0
  bash scripts/brokers.sh --profile secure up || secure_rc=$?
  wait "$default_up"
  [ "$secure_rc" -eq 0 ] || exit "$secure_rc"
elif [ "${#SERVERS[@]}" -gt 0 ]; then
  bash scripts/brokers.sh up "${SERVERS[@]}"
elif [ "$SECURE" -eq 1 ]; then
  bash scripts/brokers.sh --profile secure up
fi
export DISPYTCH_BROKERS="$BACKENDS"
exec "$PY" -m pytest "$@"
