#!/usr/bin/env bash
# Installs what iotgw's tests and demo need on a fresh Debian/Ubuntu with Go:
# mosquitto (the broker), gcc (cgo for SQLite), python3 and openssl (the
# test-vector cross-check), systemd (systemd-analyze checks the unit file). Does nothing when all are present.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
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
# Debian's package starts a system broker on 1883; iotgw's tests and demo
# run their own on free ports and never use it.
echo "installed: ${need[*]}"
