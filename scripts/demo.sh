#!/usr/bin/env bash
# demo.sh runs the whole iotgw chain on this machine and attacks it:
# a fresh PKI, two registered devices and one unregistered "intruder",
# Mosquitto with the project's config on a free port, the sample backend,
# the gateway, and "iotgw sim demo", which prints a verdict table.
#
# "make demo" runs it after building bin/iotgw. Everything lives in a work
# directory (./demo-run, recreated on each run; DEMO_DIR overrides
# it) that keeps the logs afterwards. Every process started here is stopped
# on exit, even on failure; the exit status is sim's. The system broker on
# 1883 is never touched.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${DEMO_BIN:-$root/bin/iotgw}
work=${DEMO_DIR:-$root/demo-run}
devices=(sensor_001 sensor_002)
intruder=intruder
# A device without a clock that proves freshness with a counter
# (docs/PROTOCOL.md, section 2a).
counter_device=meter_001

die() { echo "demo: $*" >&2; exit 1; }
step() { printf '  %s\n' "$*"; }

[ -x "$bin" ] || die "$bin not found; run \"make build\" first"
case "$work" in
  /*) ;;
  *) work=$PWD/$work ;;
esac
case "$work" in *[[:space:]]*) die "work dir \"$work\" contains white space, which Mosquitto cannot read; set DEMO_DIR" ;; esac

# Mosquitto started as root drops to the mosquitto user, which must be able
# to reach the certificates: every directory above the work dir must be
# traversable by others. If one is not, use a directory under /tmp.
if [ "$(id -u)" -eq 0 ]; then
  p=$(dirname "$work")
  while :; do
    if [ -d "$p" ] && [ "$(( 0$(stat -c %a "$p") & 1 ))" -eq 0 ]; then
      echo "demo: $p is not traversable by the mosquitto user; using a directory under /tmp instead"
      work=$(mktemp -d /tmp/iotgw-demo.XXXXXX)
      break
    fi
    [ "$p" = / ] && break
    p=$(dirname "$p")
  done
fi

rm -rf "$work"
mkdir -p "$work"
chmod 0755 "$work"

pids=()
names=()
cleanup() {
  local status=$? i pid
  trap - EXIT HUP INT PIPE TERM
  # Stop in reverse order: gateway first (it drains), then backend, broker.
  for (( i=${#pids[@]}-1; i>=0; i-- )); do
    pid=${pids[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "demo: ${names[i]} ignored SIGTERM for 5 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE
trap 'exit 143' TERM

# start NAME LOG CMD...: runs CMD in the background with its output in LOG.
start() {
  local name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  pids+=($!)
  names+=("$name")
}

# alive INDEX: fails, showing the log, when process INDEX has exited.
alive() {
  kill -0 "${pids[$1]}" 2>/dev/null && return 0
  echo "demo: ${names[$1]} exited; the end of its log ($2):" >&2
  tail -n 20 "$2" >&2
  exit 1
}

# free_port VAR: stores in VAR a TCP port on 127.0.0.1 that nothing
# listens on and that this script has not handed out yet. It picks below
# the kernel's ephemeral range (ip_local_port_range, 32768 and up by
# default), where outgoing connections take their local ports: a port from
# that range can be taken by any connection between this probe and the
# listener's bind ("bind: address already in use").
used_ports=" "
free_port() {
  local p low=32768 range
  if read -r range _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null && [ "$range" -gt 11024 ]; then
    low=$range
  fi
  for _ in $(seq 200); do
    p=$(( 10000 + RANDOM % (low - 10000) ))
    case "$used_ports" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      used_ports+="$p "
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  die "no free port found"
}

# http_status HOST PORT PATH: prints the HTTP status of a GET, or nothing.
http_status() {
  local line
  { exec 3<>"/dev/tcp/$1/$2"; } 2>/dev/null || return 0
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$3" "$1" >&3
  read -r -t 2 _ line _ <&3 || true
  exec 3>&-
  printf '%s' "$line"
}

echo "iotgw demo: work dir $work (certificates, databases and logs stay there)"

certs=$work/certs
db=$work/iotgw.db
# Device secrets are sealed at rest under a KEK; device add, serve and sim
# all find it through this variable (security.kek_file).
export IOTGW_SECURITY_KEK_FILE=$work/kek
"$bin" kek new "$IOTGW_SECURITY_KEK_FILE" >/dev/null
"$bin" pki init --dir "$certs" >/dev/null
for id in "${devices[@]}" "$counter_device" "$intruder"; do
  "$bin" pki issue "$id" --dir "$certs" >/dev/null
done
step "PKI: a new CA, broker and gateway certificates, device certificates for ${devices[*]}, $counter_device and $intruder"
for id in "${devices[@]}"; do
  # The generated secret is printed once; the registry keeps it and sim reads it there.
  err=$("$bin" device add "$id" --db "$db" 2>&1 >/dev/null) || die "iotgw device add $id: $err"
done
err=$("$bin" device add "$counter_device" --db "$db" --freshness counter 2>&1 >/dev/null) || die "iotgw device add $counter_device --freshness counter: $err"
step "registry: ${devices[*]} and $counter_device (counter mode) registered with fresh secrets, sealed under the KEK in $(basename "$IOTGW_SECURITY_KEK_FILE"); $intruder has a certificate but is not registered"

free_port ops_port
# Mosquitto cannot report a port it picked: if another listener took one
# of its ports after the probe, it is started again on two other ports.
for attempt in 1 2 3; do
  free_port mqtt_port
  free_port gateway_mqtt_port
  start mosquitto "$work/mosquitto.log" "$root/mosquitto/run-local.sh" --certs "$certs" --port "$mqtt_port" --gateway-port "$gateway_mqtt_port" --dir "$work/mosquitto"
  for i in $(seq 100); do
    if [ "$attempt" -lt 3 ] && ! kill -0 "${pids[0]}" 2>/dev/null && grep -q 'Address already in use' "$work/mosquitto.log"; then
      wait "${pids[0]}" 2>/dev/null || true
      pids=() names=()
      continue 2
    fi
    alive 0 "$work/mosquitto.log"
    # "running" follows the listener's start; the TCP probe is a fallback.
    grep -q ' running$' "$work/mosquitto.log" && break 2
    [ "$i" -gt 30 ] && (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && break 2
    [ "$i" -lt 100 ] || die "Mosquitto is not listening on $mqtt_port after 10 s; see $work/mosquitto.log"
    sleep 0.1
  done
done
step "Mosquitto: ssl://127.0.0.1:$mqtt_port, client certificates required, the project ACL"
step "Mosquitto: the gateway's own listener ssl://127.0.0.1:$gateway_mqtt_port (devices' client ids are their CN on $mqtt_port)"

backend_log=$work/backend-requests.jsonl
# The backend binds port 0 and prints the port the kernel gave it.
start backend "$work/backend.log" "$bin" backend --listen "127.0.0.1:0" --log "$backend_log"
backend_port=
for i in $(seq 100); do
  alive 1 "$work/backend.log"
  backend_port=$(sed -n 's|^backend listening on http://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$work/backend.log")
  [ -n "$backend_port" ] && [ "$(http_status 127.0.0.1 "$backend_port" /healthz)" = 200 ] && break
  [ "$i" -lt 100 ] || die "the backend does not answer after 10 s; see $work/backend.log"
  sleep 0.1
done
step "sample backend: http://127.0.0.1:$backend_port (each request it gets is logged to $(basename "$backend_log"))"

cat >"$work/iotgw.yaml" <<EOF
# Written by scripts/demo.sh; see examples/iotgw.yaml for every key.
mqtt:
  broker: ssl://127.0.0.1:$gateway_mqtt_port
  client_id: iotgw:gateway
  ca_file: $certs/ca.crt
  cert_file: $certs/gateway.crt
  key_file: $certs/gateway.key
registry:
  path: $db
outbox:
  path: $work/iotgw-outbox.db
backend:
  url: http://127.0.0.1:$backend_port/ingest/{device_id}
http:
  listen: 127.0.0.1:$ops_port
log:
  level: info
  format: json
EOF
start gateway "$work/gateway.log" "$bin" serve --config "$work/iotgw.yaml"
for i in $(seq 200); do
  alive 2 "$work/gateway.log"
  [ "$(http_status 127.0.0.1 "$ops_port" /readyz)" = 200 ] && break
  [ "$i" -lt 200 ] || die "the gateway is not ready after 20 s; see $work/gateway.log"
  sleep 0.1
done
step "gateway (iotgw serve): connected and subscribed; /healthz /readyz /metrics on http://127.0.0.1:$ops_port"
step "sim: valid readings from ${devices[*]}, then one attack at a time..."
echo

set +e
"$bin" sim demo \
  --broker "ssl://127.0.0.1:$mqtt_port" \
  --certs "$certs" \
  --db "$db" \
  --devices "$(IFS=,; echo "${devices[*]}")" \
  --intruder "$intruder" \
  --counter-device "$counter_device" \
  --gateway-client-id iotgw:gateway \
  --backend-log "$backend_log" \
  --metrics "http://127.0.0.1:$ops_port/metrics"
status=$?
set -e

# The audit trail: the gateway's rejections (the flood folded into one
# entry per second) and the admin commands above, in one hash chain.
sleep 1.5 # the gateway appends each second's folded rejections a second later
echo
"$bin" audit tail --config "$work/iotgw.yaml" -n 8 || status=1
"$bin" audit verify --config "$work/iotgw.yaml" || status=1

echo
echo "logs: $work/{mosquitto,backend,gateway}.log; backend requests: $backend_log"
[ "$status" -eq 0 ] || echo "demo: some scenarios did not behave as expected (sim exit status $status)" >&2
exit "$status"
