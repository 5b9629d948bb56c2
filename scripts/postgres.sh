#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests use answers: IOTGW_TEST_PG (default
# postgres://127.0.0.1:5432/test, trust auth, as on the project's CI
# machine). Starts the local cluster when it is down; on a fresh install
# (Debian's postgresql package) it also creates a superuser role for the
# current user and the database test, and trusts loopback connections.
# Each test creates its own database and drops it.
set -euo pipefail
dsn="${IOTGW_TEST_PG:-postgres://127.0.0.1:5432/test?sslmode=disable}"
ok() { psql "$dsn" -qtAc 'SELECT 1' >/dev/null 2>&1; }
ok && exit 0
if [ -n "${IOTGW_TEST_PG:-}" ]; then
  echo "iotgw: PostgreSQL at IOTGW_TEST_PG does not answer" >&2; exit 1
fi
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "iotgw: no PostgreSQL here (scripts/install-deps.sh installs it), or set IOTGW_TEST_PG" >&2; exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "iotgw: PostgreSQL at 127.0.0.1:5432 does not answer; start it (as root: scripts/postgres.sh) or set IOTGW_TEST_PG" >&2; exit 1
fi
ver="$(ls /etc/postgresql | sort -V | tail -1)"
pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || true
for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
ok && { echo "postgres: started cluster $ver/main"; exit 0; }
# A fresh install: password auth on loopback, no role for us, no database test.
me="$(id -un)"
hba="/etc/postgresql/$ver/main/pg_hba.conf"
if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
  sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
fi
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname = '$me'\"" | grep -q 1 ||
  su postgres -c "createuser --superuser $me"
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" | grep -q 1 ||
  su postgres -c "createdb -O $me test"
ok || { echo "iotgw: PostgreSQL still does not answer at $dsn" >&2; exit 1; }
echo "postgres: cluster $ver/main ready for the tests (trust on loopback, role $me, database test)"
