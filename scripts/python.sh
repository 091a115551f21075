# Sourced by demo.sh and test.sh: find a Python >= 3.11 with the packages a command needs,
# installing them (pip install -e ".[EXTRAS]") only when one is missing, so a second run is
# quick. Where the system Python refuses pip installs (PEP 668) or has no pip, a .venv in the
# checkout is used instead. Sets PY; puts the checkout's src/ first on PYTHONPATH.
#
#   ensure_python "EXTRAS" module [module ...]     e.g. ensure_python "dev" pytest aiokafka

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT_DIR/src${PYTHONPATH:+:$PYTHONPATH}"

_py_ok() { # python -> 0 if it is 3.11+
  "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

_py_has() { # python modules... -> 0 if every module can be found (nothing is imported)
  local py="$1"
  shift
  "$py" - "$@" <<'PYEOF' 2>/dev/null
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(name) is None for name in sys.argv[1:]))
PYEOF
}

_pip_install() { # python spec -> pip install, quietly
  "$1" -m pip install -q --disable-pip-version-check -e "$2"
}

ensure_python() {
  local extras="$1" spec
  shift
  spec="$ROOT_DIR"
  [ -n "$extras" ] && spec="$ROOT_DIR[$extras]"
  PY=""
  local candidate
  for candidate in "${PYTHON:-}" "$ROOT_DIR/.venv/bin/python" python3 python; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && _py_ok "$candidate" || continue
    if _py_has "$candidate" "$@"; then PY="$candidate"; return 0; fi
    [ -z "$PY" ] && PY="$candidate"
  done
  if [ -z "$PY" ]; then
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    return 1
  fi
  local t0=$SECONDS
  echo "installing dispytch[${extras:-core}] and its dependencies for $PY ..." >&2
  if ! _pip_install "$PY" "$spec" 2>/tmp/dispytch-pip.$$.log; then
    # No pip, or an externally managed Python: use a virtual environment in the checkout.
    if ! "$PY" -m venv "$ROOT_DIR/.venv" >/dev/null 2>&1; then
      if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
          --no-install-recommends python3-venv python3-pip >/dev/null
      fi
      "$PY" -m venv "$ROOT_DIR/.venv" || { cat /tmp/dispytch-pip.$$.log >&2; return 1; }
    fi
    PY="$ROOT_DIR/.venv/bin/python"
    _pip_install "$PY" "$spec" || return 1
  fi
  rm -f /tmp/dispytch-pip.$$.log
  echo "installed in $((SECONDS - t0))s" >&2
}
