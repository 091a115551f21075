#!/usr/bin/env bash
# The demo, on any machine with Python 3.11+: installs Dispytch's one dependency (pydantic)
# when it is missing, then runs examples/demo.py on the in-memory backend.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/python.sh
ensure_python "" pydantic
exec "$PY" examples/demo.py "$@"
