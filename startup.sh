#!/usr/bin/env bash
# tgc: ops entry point.
#   ./startup.sh demo                      the service against the loopback Telegram emulator
#   ./startup.sh test [pytest args]        lint, type-check and run the test suite
#   ./startup.sh start|stop|restart|status|logs   the server in the background (see README)
# Each command creates .venv at the project root and installs the pinned requirements
# on first use (and again whenever a requirements file changes).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

ensure_venv() {
  local reqs="$1" stamp want
  stamp="$VENV/.installed-$(basename "$reqs")"
  want=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
  if [ -x "$PY" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$PY" ]; then
    echo "creating virtualenv in $VENV" >&2
    python3 -m venv "$VENV"
  fi
  echo "installing $reqs into $VENV" >&2
  "$PY" -m pip install -q --disable-pip-version-check -r "$reqs" >&2
  rm -f "$VENV"/.installed-*
  echo "$want" >"$stamp"
}

cmd_test() {
  ensure_venv requirements-dev.txt
  "$VENV/bin/ruff" check .
  "$VENV/bin/mypy"
  exec "$PY" -m pytest "$@"
}

cmd_demo() {
  ensure_venv requirements.txt
  exec "$PY" start.py demo "$@"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    test) cmd_test "$@" ;;
    demo) cmd_demo "$@" ;;
    *)
      echo "usage: $0 demo|test|start|stop|restart|status|logs" >&2
      exit 2 ;;
  esac
}

main "$@"
