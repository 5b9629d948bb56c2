#!/usr/bin/env bash
# Starts or stops a private Docker engine for the compose test
# (test/compose), on machines where none runs: `start` installs docker.io,
# docker-compose and debootstrap if missing (apt-get), starts dockerd with
# no bridge and no iptables rules (the test uses host networking on
# loopback only), waits until it answers, and prints the line to eval:
#   eval "$(scripts/docker-engine.sh start)"   # export DOCKER_HOST=unix://...
#   ...
#   scripts/docker-engine.sh stop               # stops only the engine it started
# An engine that already answers (DOCKER_HOST or the default socket) is
# used as is, and `stop` then leaves it alone. Images and the build cache
# live under $IOTGW_DOCKER_CACHE (default /var/cache/iotgw-docker), so a
# second run on the same machine is fast; runtime state under
# $IOTGW_DOCKER_RUN (default /var/tmp/iotgw-docker).
set -euo pipefail
CACHE="${IOTGW_DOCKER_CACHE:-/var/cache/iotgw-docker}"
RUN="${IOTGW_DOCKER_RUN:-/var/tmp/iotgw-docker}"
SOCK="$RUN/docker.sock"
PIDFILE="$RUN/dockerd.pid"

answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

start() {
  if answers; then
    echo "docker-engine: an engine already answers${DOCKER_HOST:+ at $DOCKER_HOST}; using it" >&2
    [ -n "${DOCKER_HOST:-}" ] && echo "export DOCKER_HOST=$DOCKER_HOST"
    return 0
  fi
  local need=()
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  if [ ${#need[@]} -gt 0 ]; then
    echo "docker-engine: installing ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2 ||
      { echo "docker-engine: apt-get install ${need[*]} failed" >&2; return 1; }
  fi
  [ "$(id -u)" -eq 0 ] || { echo "docker-engine: dockerd needs root" >&2; return 1; }
  mkdir -p "$CACHE/engine" "$RUN/exec"
  export DOCKER_HOST="unix://$SOCK"
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && answers; then
    echo "docker-engine: ours already runs (pid $(cat "$PIDFILE"))" >&2
    echo "export DOCKER_HOST=$DOCKER_HOST"; return 0
  fi
  rm -f "$SOCK" "$PIDFILE"
  # Debian's package may have started containerd/dockerd under systemd;
  # this one is separate: its own data root, exec root, socket and pidfile.
  setsid dockerd --bridge=none --iptables=false --ip6tables=false \
    --data-root "$CACHE/engine" --exec-root "$RUN/exec" \
    -H "$DOCKER_HOST" --pidfile "$PIDFILE" >"$RUN/dockerd.log" 2>&1 </dev/null &
  local i
  for i in $(seq 1 60); do
    answers && { echo "docker-engine: started (pid $(cat "$PIDFILE"), log $RUN/dockerd.log)" >&2; echo "export DOCKER_HOST=$DOCKER_HOST"; return 0; }
    sleep 1
  done
  echo "docker-engine: dockerd did not answer within 60 s; last lines of $RUN/dockerd.log:" >&2
  tail -20 "$RUN/dockerd.log" >&2
  stop
  return 1
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  local pid; pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    local i
    for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "docker-engine: stopped (pid $pid)" >&2
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
