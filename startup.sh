#!/usr/bin/env bash
# tgc: ops entry point.
#   ./startup.sh demo [--once]             the service against the loopback Telegram emulator
#   ./startup.sh test [pytest args]        lint, type-check and run the test suite
#   ./startup.sh start   [--config PATH]   run the server in the background (pid file, log file)
#   ./startup.sh stop    [--config PATH]   graceful stop (SIGTERM); SIGKILL only after a timeout
#   ./startup.sh restart [--config PATH]
#   ./startup.sh reload  [--config PATH]   reread sessions/ and the sidecars (SIGHUP): new
#                                          accounts join, removed/disabled ones leave gracefully
#   ./startup.sh status  [--config PATH]   running or not, since when, and the /healthz answer
#   ./startup.sh logs    [--config PATH]   follow the log file
# Each command creates .venv at the project root and installs the pinned requirements
# on first use (and again whenever a requirements file changes).
#
# Where things are comes from the config (python start.py paths): the pid file is
# data.dir/run/tgc.pid, held with a lock while the server runs (so a stale file after a crash
# never blocks a start), the log is log.dir/tgc.log, and what the process prints before its
# logging is up (a config error, a crash) goes to log.dir/tgc.out.
#
# stop reports the exit code the server left in data.dir/run/tgc.exit (its last act).
#
# Exit codes: 0 ok; 1 failed (did not start, had to be killed, stopped with a non-zero exit
# code or without leaving one); 2 bad usage or bad config;
# status: 3 when not running (LSB).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
# Not TGC_*: every TGC_* variable is a config override, and an unknown one stops the start.
START_TIMEOUT=${STARTUP_WAIT:-60}

ensure_venv() {
  local reqs="$1" stamp want
  stamp="$VENV/.installed-$(basename "$reqs")"
  want=$(cat requirements*.txt native/pyproject.toml native/setup.py native/*.c | sha256sum | cut -d' ' -f1)
  if [ -x "$PY" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  # The dev requirements include the runtime ones: a current dev install serves both.
  if [ "$reqs" = requirements.txt ] && [ -x "$PY" ] && [ -f "$VENV/.installed-requirements-dev.txt" ] \
      && [ "$(cat "$VENV/.installed-requirements-dev.txt")" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$PY" ]; then
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
      echo "$0: tgc needs Python 3.11 or newer as python3 (found: $(python3 --version 2>&1))" >&2
      exit 2
    }
    echo "creating virtualenv in $VENV" >&2
    # Debian's python3 has no ensurepip until python3-venv is installed: say so, not a traceback.
    python3 -m venv "$VENV" || {
      rm -rf "$VENV"
      echo "$0: could not create $VENV (on Debian/Ubuntu: apt-get install python3-venv)" >&2
      exit 2
    }
  fi
  echo "installing $reqs into $VENV" >&2
  "$PY" -m pip install -q --disable-pip-version-check -r "$reqs" >&2
  # native/: AES-IGE with AES-NI for the media connections (native/tgc_ige.c says why). It
  # needs a C compiler and Python's headers; without them tgc runs on cryptg, slower.
  echo "building native/ (tgc_ige) into $VENV" >&2
  "$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps ./native >&2 || {
    echo "$0: WARNING: could not build native/ (needs gcc and the Python headers, e.g." \
      "apt-get install gcc python3-dev); media downloads decrypt with cryptg, ~25 % slower." \
      "Install them, then remove $VENV and start again." >&2
  }
  rm -rf native/build native/*.egg-info  # what setuptools leaves in the source tree
  rm -f "$VENV"/.installed-*
  echo "$want" >"$stamp"
}

# load_paths strict|lenient [--config PATH]: CONFIG_ARGS, and the file locations. strict
# (start) also requires the secrets; lenient (stop, status, logs) doesn't: the secrets may
# have been set only in the environment the server was started from.
load_paths() {
  local mode="$1"; shift
  CONFIG_ARGS=()
  while [ $# -gt 0 ]; do
    case "$1" in
      -c|--config)
        [ $# -ge 2 ] || { echo "$0: --config needs a path" >&2; exit 2; }
        CONFIG_ARGS=(--config "$2"); shift 2 ;;
      --config=*) CONFIG_ARGS=(--config "${1#--config=}"); shift ;;
      *) echo "$0: unknown option $1" >&2; exit 2 ;;
    esac
  done
  local assignments extra=()
  [ "$mode" = strict ] || extra=(--no-secrets)
  # A bad config stops here, with start.py's message naming the key and the file (exit 2).
  assignments=$("$PY" start.py paths "${CONFIG_ARGS[@]}" "${extra[@]}") || exit $?
  eval "$assignments"
}

# Running = someone holds the pid file's lock (the server takes it for its whole life).
# (Opened read-only, not by flock(1) itself: that would re-create a pid file the server just
# removed on its way out.)
running() {
  local fd rc=0
  { exec {fd}<"$PID_FILE"; } 2>/dev/null || return 1
  if command -v flock >/dev/null; then
    flock -n "$fd" && rc=1
  else
    local pid; pid=$(tr -dc '0-9' <&"$fd")
    { [ -n "$pid" ] && kill -0 "$pid"; } 2>/dev/null || rc=1
  fi
  exec {fd}<&-
  return $rc
}

server_pid() { tr -dc '0-9' <"$PID_FILE"; }

# alive PID: the process exists and is not a zombie (an exited process nobody reaped yet).
alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "${state:0:1}" != Z ]
}

cmd_start() {
  ensure_venv requirements.txt
  load_paths strict "$@"
  if running; then
    echo "tgc is already running (pid $(server_pid)); not starting another" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$OUT_FILE")"
  echo "--- $(date -u '+%Y-%m-%dT%H:%M:%SZ') ./startup.sh start" >>"$OUT_FILE"
  nohup "$PY" start.py serve --no-console "${CONFIG_ARGS[@]}" >>"$OUT_FILE" 2>&1 </dev/null &
  local pid=$! waited=0
  # Up = the new process holds the pid file and wrote the URL file (after it listens).
  while [ "$waited" -lt $((START_TIMEOUT * 10)) ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" || true
      echo "tgc did not start; the end of $OUT_FILE:" >&2
      tail -n 20 "$OUT_FILE" >&2
      exit 1
    fi
    if [ -f "$URL_FILE" ] && [ "$(server_pid 2>/dev/null || true)" = "$pid" ]; then
      echo "tgc started (pid $pid) on $(cat "$URL_FILE"); log: $LOG_FILE"
      return 0
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "tgc (pid $pid) is not serving after ${START_TIMEOUT}s; see $LOG_FILE and $OUT_FILE" >&2
  exit 1
}

cmd_stop() {
  ensure_venv requirements.txt
  load_paths lenient "$@"
  if ! running; then
    echo "tgc is not running"
    return 0
  fi
  local pid t0 waited=0
  STOP_TIMEOUT=${STOP_WAIT:-$STOP_TIMEOUT}  # STOP_WAIT=SECONDS overrides the config's bound
  pid=$(server_pid)
  t0=$(date +%s)
  rm -f "$EXIT_FILE"  # a previous server's: what is read below is this one's
  echo "stopping tgc (pid $pid): SIGTERM, waiting up to ${STOP_TIMEOUT}s"
  kill -TERM "$pid"
  # The server releases the pid file's lock, then writes its exit code and exits: wait
  # for the process itself, and report the code it left, not the lock's release.
  while { running || alive "$pid"; } && [ "$waited" -lt $((STOP_TIMEOUT * 10)) ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if running || alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    while running || alive "$pid"; do sleep 0.1; done
    echo "tgc did not stop within ${STOP_TIMEOUT}s: had to force it (SIGKILL)" >&2
    return 1
  fi
  local took=$(( $(date +%s) - t0 )) exit_pid="" code=""
  [ -f "$EXIT_FILE" ] && read -r exit_pid code <"$EXIT_FILE" || true
  if [ "$exit_pid" != "$pid" ] || [ -z "$code" ]; then
    echo "tgc (pid $pid) is gone after ${took}s but left no exit code (killed?); see $LOG_FILE and $OUT_FILE" >&2
    return 1
  fi
  if [ "$code" != 0 ]; then
    echo "tgc stopped in ${took}s with exit code $code (not a clean stop); see $LOG_FILE" >&2
    return 1
  fi
  echo "tgc stopped gracefully (exit 0) in ${took}s"
}

# reload: SIGHUP, then the server's summary once it wrote one (data.dir/run/tgc.reloaded).
cmd_reload() {
  ensure_venv requirements.txt
  load_paths lenient "$@"
  if ! running; then
    echo "tgc is not running" >&2
    return 1
  fi
  local pid before="" now waited=0
  pid=$(server_pid)
  [ -f "$RELOADED_FILE" ] && before=$(cat "$RELOADED_FILE")
  kill -HUP "$pid"
  while [ "$waited" -lt $((START_TIMEOUT * 10)) ]; do
    now=$(cat "$RELOADED_FILE" 2>/dev/null || true)
    if [ -n "$now" ] && [ "$now" != "$before" ] && [ "${now%% *}" = "$pid" ]; then
      echo "tgc (pid $pid) reloaded: $(cut -d' ' -f3- <<<"$now"); see $LOG_FILE"
      return 0
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  echo "tgc (pid $pid) got SIGHUP but reported no reload within ${START_TIMEOUT}s; see $LOG_FILE" >&2
  return 1
}

cmd_status() {
  ensure_venv requirements.txt
  load_paths lenient "$@"
  if ! running; then
    echo "tgc is not running"
    exit 3
  fi
  local pid since url health
  pid=$(server_pid)
  since=$(ps -o lstart= -p "$pid" 2>/dev/null | sed 's/^ *//' || true)
  echo "tgc is running (pid $pid) since ${since:-?}"
  if [ -f "$URL_FILE" ]; then
    url=$(cat "$URL_FILE")
    echo "listening on $url"
    health=$(curl -s -m 5 -w ' (HTTP %{http_code})' "$url/healthz" || echo "no answer")
    echo "health: $health"
  else
    echo "not serving yet (starting or stopping)"
  fi
}

cmd_logs() {
  ensure_venv requirements.txt
  load_paths lenient "$@"
  exec tail -n "${LINES:-100}" -F "$LOG_FILE"
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
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    restart) cmd_stop "$@" || true; cmd_start "$@" ;;
    status) cmd_status "$@" ;;
    reload) cmd_reload "$@" ;;
    logs) cmd_logs "$@" ;;
    *)
      echo "usage: $0 demo|test|start|stop|restart|reload|status|logs [--config PATH]" >&2
      exit 2 ;;
  esac
}

main "$@"
