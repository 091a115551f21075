#!/usr/bin/env bash
# The backend and conformance tests against the newest release of every broker client that
# pyproject.toml's bounds admit (aiokafka, aio-pika, aiormq, pamqp, redis, hiredis, nats-py), so
# a client release that changes the internals Dispytch relies on (each backend's _compat module)
# fails a test here instead of changing behaviour silently.
#
# Runs in a throwaway virtualenv (the environment it is started from keeps its versions) and
# uses the brokers that are running (start them with: bash scripts/brokers.sh up). Extra
# arguments go to pytest. DISPYTCH_BROKERS as for scripts/test.sh (default: every backend).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/python.sh
ensure_python dev pytest

CLIENTS='aiokafka|aio-pika|aiormq|pamqp|redis|hiredis|nats-py|msgpack'
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The test tools come from the running environment; only the clients are upgraded in the venv,
# to the newest release the extras' bounds admit (read from pyproject.toml).
"$PY" -m venv --system-site-packages "$work/venv"
VPY="$work/venv/bin/python"
mapfile -t REQUIREMENTS < <("$PY" - <<'PYEOF'
import tomllib

with open("pyproject.toml", "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
for extra in ("kafka", "rabbitmq", "redis", "nats", "msgpack"):
    print(*extras[extra], sep="\n")
PYEOF
)
if ! "$VPY" -m pip install -q --disable-pip-version-check --upgrade "${REQUIREMENTS[@]}" \
  >"$work/pip.log" 2>&1; then
  cat "$work/pip.log"
  exit 1
fi
echo "clients under test (newest within pyproject.toml's bounds):"
"$VPY" -m pip list --disable-pip-version-check 2>/dev/null | grep -iE "^($CLIENTS) " | sed 's/^/  /' || true
# Tell (without failing) when a release exists that the bounds keep out: a new major to check.
for client in aiokafka aio-pika aiormq pamqp redis nats-py; do
  newest="$("$VPY" -m pip index versions "$client" 2>/dev/null | sed -n '1s/.*(\(.*\)).*/\1/p' || true)"
  installed="$("$VPY" -c "import importlib.metadata as m; print(m.version('$client'))")"
  if [ -n "$newest" ] && [ "$newest" != "$installed" ]; then
    echo "  note: $client $newest is out (outside the bounds; $installed tested)"
  fi
done

export DISPYTCH_BROKERS="${DISPYTCH_BROKERS-kafka,rabbitmq,redis,redis_streams,nats,nats_core}"
# The backend and conformance suites, and the unit tests that pin what _compat relies on
# (hand-built AMQP frames against pamqp's, the lenient decoders, TLS and Sentinel connections).
exec "$VPY" -m pytest tests/backends tests/conformance tests/unit/test_compat_fences.py \
  tests/unit/test_kafka_compat.py tests/unit/test_poison_conversions.py \
  tests/unit/test_rabbitmq_wire.py tests/unit/test_rabbitmq_frames.py \
  tests/unit/test_cluster_config.py tests/security/test_connection_options.py "$@"
