#!/usr/bin/env bash
# Installs what iotgw needs and a fresh Debian/Ubuntu with Go lacks, for
# one of two uses; does nothing when all of it is present:
#
#   scripts/install-deps.sh demo   make demo, "Run it for real" and the
#                                  compose quick start's device: apt-get
#                                  install mosquitto, gcc and libc6-dev (cgo
#                                  for SQLite), python3 and python3-paho-mqtt
#                                  (the Python device). Nothing else.
#   scripts/install-deps.sh [test] make test: the above, plus openssl and
#                                  python3 (the test-vector cross-check),
#                                  promtool (Debian package prometheus:
#                                  checks deploy/prometheus/alerts.yml),
#                                  libmbedtls-dev and libmosquitto-dev (the
#                                  C device example and program),
#                                  python3-cryptography (the Python
#                                  device's key and CSR),
#                                  systemd (systemd-analyze checks the unit
#                                  file), postgresql (the storage.engine
#                                  postgres tests; scripts/postgres.sh starts
#                                  it) and golangci-lint v2 (make lint; go
#                                  install from the Go module proxy into
#                                  $(go env GOPATH)/bin).
#
# What this changes on the machine is in README.md ("What make demo and
# make test install").
set -euo pipefail
profile="${1:-test}"
case "$profile" in
  demo | test) ;;
  *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac
GOLANGCI_LINT_VERSION=v2.15.0
need=()
# The demo's share: the broker, cgo and the Python device.
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
# Debian's python3-paho-mqtt is for Debian's python3 (/usr/bin/python3).
/usr/bin/python3 -c 'import paho.mqtt.client' >/dev/null 2>&1 || need+=(python3-paho-mqtt)
if [ "$profile" = test ]; then
  gobin="$(go env GOBIN)"; [ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
  lint="$(command -v golangci-lint || echo "$gobin/golangci-lint")"
  if ! "$lint" version 2>/dev/null | grep -q 'version 2\.'; then
    echo "installing: golangci-lint $GOLANGCI_LINT_VERSION (go install)"
    go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION" ||
      { echo "iotgw: go install golangci-lint@$GOLANGCI_LINT_VERSION failed" >&2; exit 1; }
  fi
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  [ -f /usr/include/mbedtls/sha256.h ] || need+=(libmbedtls-dev)
  # libmosquitto-dev: the C device program (examples/c-device/device.c, TestCDevice).
  [ -f /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
  # python3-cryptography: examples/python-device/make_csr.py (the device's key and CSR).
  /usr/bin/python3 -c 'import cryptography' >/dev/null 2>&1 || need+=(python3-cryptography)
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
  command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing: ${need[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "iotgw: cannot install ${need[*]}: no apt-get here; install them with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "iotgw: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || { echo "iotgw: apt-get update failed; install ${need[*]} by hand" >&2; exit 1; }
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || { echo "iotgw: apt-get install ${need[*]} failed" >&2; exit 1; }
# Debian's packages start a system broker on 1883 (mosquitto) and a
# Prometheus on 9090 (prometheus, for promtool) where systemd runs; iotgw's
# tests and demo run their own on free ports and never use them.
echo "installed: ${need[*]}"
