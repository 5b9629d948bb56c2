#!/usr/bin/env bash
# run-local.sh runs Mosquitto with the project's mosquitto.conf and acl
# outside /etc/iotgw: it writes a copy of both into a directory of your
# choice with the certificate path, the ACL path and the listener
# substituted (the same substitutions test/harness makes), then execs
# mosquitto in the foreground. Stop it with Ctrl-C or SIGTERM.
#
#   mosquitto/run-local.sh --certs DIR --port PORT --dir DIR [--gateway-port PORT] [--bind ADDR] [--debug]
#
#   --certs DIR  PKI directory from "iotgw pki init" (ca.crt, broker.crt, broker.key, crl.pem)
#   --port PORT  device TLS listener port (never 1883 or 8883 of a system broker)
#   --dir DIR    where mosquitto.conf and acl are written (created, mode 0755)
#   --gateway-port PORT  the gateway's listener, always on 127.0.0.1 (default PORT+1)
#   --bind ADDR  device listener address (default 127.0.0.1)
#   --debug      log everything, denied publishes and subscriptions included
#
# Started as root, Mosquitto drops to the "mosquitto" user before it reads
# the certificates and the ACL: every directory above them must be
# traversable by that user and broker.key readable ("iotgw pki init" makes
# it 0640 group mosquitto). The script checks this before starting.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
certs="" port="" gwport="" dir="" bind=127.0.0.1 debug=""

usage() { sed -n '7,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "run-local: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --certs) certs=${2:-}; shift 2 ;;
    --port) port=${2:-}; shift 2 ;;
    --gateway-port) gwport=${2:-}; shift 2 ;;
    --dir) dir=${2:-}; shift 2 ;;
    --bind) bind=${2:-}; shift 2 ;;
    --debug) debug=1; shift ;;
    -h|--help) usage ;;
    *) echo "run-local: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$certs" ] && [ -n "$port" ] && [ -n "$dir" ] || usage
case "$port" in ''|*[!0-9]*) die "--port must be a number, got $port" ;; esac
[ -n "$gwport" ] || gwport=$((port + 1))
case "$gwport" in *[!0-9]*) die "--gateway-port must be a number, got $gwport" ;; esac
[ "$gwport" != "$port" ] || die "--gateway-port must differ from --port"

mosquitto=$(command -v mosquitto || true)
[ -n "$mosquitto" ] || { [ -x /usr/sbin/mosquitto ] && mosquitto=/usr/sbin/mosquitto; } \
  || die "mosquitto is not installed (apt-get install mosquitto, or scripts/install-deps.sh)"

mkdir -p "$dir"
chmod 0755 "$dir"
certs=$(cd "$certs" && pwd) || die "no PKI directory $certs"
dir=$(cd "$dir" && pwd)
for p in "$certs" "$dir"; do
  case "$p" in *[[:space:]]*) die "path \"$p\" contains white space, which Mosquitto cannot read" ;; esac
done
for f in ca.crt broker.crt broker.key; do
  [ -f "$certs/$f" ] || die "$certs/$f is missing (run: iotgw pki init --dir $certs)"
done
# Mosquitto refuses to start without the crlfile it names.
[ -f "$certs/crl.pem" ] || die "$certs/crl.pem is missing (a PKI from before revocation; run: iotgw pki crl --dir $certs)"

# The strings of mosquitto.conf that are replaced; keep them in step with
# test/harness/mosquitto.go.
conf_certs=/etc/iotgw/certs/
conf_acl=/etc/iotgw/mosquitto/acl
conf_data=/var/lib/iotgw/mosquitto/
conf=$(cat "$here/mosquitto.conf")
case "$conf" in *"$conf_certs"*) ;; *) die "$conf_certs not found in mosquitto.conf" ;; esac
case "$conf" in *"$conf_acl"*) ;; *) die "$conf_acl not found in mosquitto.conf" ;; esac
case "$conf" in *"$conf_data"*) ;; *) die "$conf_data not found in mosquitto.conf" ;; esac
n=$(grep -c '^listener 8883[[:space:]]*$' "$here/mosquitto.conf" || true)
[ "$n" = 1 ] || die "want one \"listener 8883\" line in mosquitto.conf, found $n"
n=$(grep -c '^listener 8884 127\.0\.0\.1[[:space:]]*$' "$here/mosquitto.conf" || true)
[ "$n" = 1 ] || die "want one \"listener 8884 127.0.0.1\" line in mosquitto.conf, found $n"

conf=${conf//"$conf_certs"/"$certs/"}
conf=${conf//"$conf_acl"/"$dir/acl"}
conf=${conf//"$conf_data"/"$dir/data/"}
# The persistence directory: Mosquitto writes its database here after
# dropping root, so it must be writable by the mosquitto user.
mkdir -p "$dir/data"
if [ "$(id -u)" -eq 0 ] && id mosquitto >/dev/null 2>&1; then
  chown mosquitto "$dir/data"
fi
printf '%s\n' "$conf" | sed -e "s/^listener 8883[[:space:]]*\$/listener $port $bind/" \
  -e "s/^listener 8884 127\.0\.0\.1[[:space:]]*\$/listener $gwport 127.0.0.1/" > "$dir/mosquitto.conf"
[ -z "$debug" ] || printf 'log_type all\n' >> "$dir/mosquitto.conf"
if grep -v '^[[:space:]]*#' "$dir/mosquitto.conf" | grep -Eq '/etc/iotgw/|/var/lib/iotgw/'; then
  die "mosquitto.conf has an /etc/iotgw/ or /var/lib/iotgw/ path this script does not handle"
fi
cp "$here/acl" "$dir/acl"
chmod 0644 "$dir/mosquitto.conf" "$dir/acl"

# Started as root, Mosquitto reads the files as the mosquitto user.
if [ "$(id -u)" -eq 0 ] && id mosquitto >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1; then
  for f in "$certs/ca.crt" "$certs/broker.crt" "$certs/broker.key" "$certs/crl.pem" "$dir/acl"; do
    runuser -u mosquitto -- test -r "$f" \
      || die "the mosquitto user cannot read $f (make every directory above it 0755 and broker.key group mosquitto, mode 0640)"
  done
fi

exec "$mosquitto" -c "$dir/mosquitto.conf"
