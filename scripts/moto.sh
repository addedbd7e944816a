#!/usr/bin/env bash
# Local AWS for tests and the demo: a pinned moto_server (SQS + DynamoDB) on loopback.
#   scripts/moto.sh install          install the pinned moto[server] into .local/venv
#   scripts/moto.sh start [PORT]     start it (default port 5055), wait until it answers
#   scripts/moto.sh stop             stop the server this script started
#   scripts/moto.sh url              print the endpoint URL of the running server
set -euo pipefail

MOTO_VERSION="5.2.5"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="$root/.local"
venv="$state/venv"
pidfile="$state/moto.pid"
portfile="$state/moto.port"
logfile="$state/moto.log"
mkdir -p "$state"

install() {
  if [ -x "$venv/bin/moto_server" ] && [ "$(cat "$venv/.moto-version" 2>/dev/null)" = "$MOTO_VERSION" ]; then
    return 0
  fi
  echo "installing moto[server]==$MOTO_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  echo "$MOTO_VERSION" > "$venv/.moto-version"
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start() {
  local port="${1:-${MOTO_PORT:-5055}}"
  install
  if running; then
    echo "moto_server already running on port $(cat "$portfile")" >&2
    return 0
  fi
  # moto reads credentials/region from nowhere; nothing leaves loopback.
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
  echo $! > "$pidfile"
  echo "$port" > "$portfile"
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1; then
      echo "moto_server $MOTO_VERSION listening on http://127.0.0.1:$port" >&2
      return 0
    fi
    if ! running; then
      echo "moto_server exited; its log:" >&2
      cat "$logfile" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "moto_server did not answer on port $port within 20 s" >&2
  return 1
}

stop() {
  if running; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    for _ in $(seq 1 50); do running || break; sleep 0.1; done
    running && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  fi
  rm -f "$pidfile" "$portfile"
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop ;;
  url) echo "http://127.0.0.1:$(cat "$portfile")" ;;
  *) echo "usage: $0 install|start [PORT]|stop|url" >&2; exit 64 ;;
esac
