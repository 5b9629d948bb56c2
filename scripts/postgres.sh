#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests use answers: IOTGW_TEST_PG (default
# postgres://127.0.0.1:5432/test, trust auth, as on the project's CI
# machine). Starts the local cluster when it is down. On a fresh install
# (Debian's postgresql package) it also creates, for the current user, a
# role that may create databases but is not a superuser, owning a database
# test, and trusts loopback connections for that role only (two lines at
# the top of pg_hba.conf, printed by "scripts/postgres.sh --hba-rules"):
# every other role keeps Debian's password (scram) authentication. Each
# test creates its own database (iotgw_t_<random>, owned by that role) and
# drops it, so the rule names the role and not one database.
set -euo pipefail
dsn="${IOTGW_TEST_PG:-postgres://127.0.0.1:5432/test?sslmode=disable}"
me="$(id -un)"
# hba_rules ROLE: the pg_hba.conf lines this script adds.
hba_rules() {
  printf 'host all %s 127.0.0.1/32 trust\n' "$1"
  printf 'host all %s ::1/128 trust\n' "$1"
}
if [ "${1:-}" = --hba-rules ]; then hba_rules "$me"; exit 0; fi
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
# A fresh install: password auth on loopback, no role for us, no database
# test. The role may create databases (each test makes its own) but is no
# superuser, so trust on loopback hands out no more than that.
hba="/etc/postgresql/$ver/main/pg_hba.conf"
if ! grep -qxF "$(hba_rules "$me" | head -1)" "$hba"; then
  { hba_rules "$me"; cat "$hba"; } > "$hba.iotgw" && cat "$hba.iotgw" > "$hba" && rm -f "$hba.iotgw"
  pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
fi
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname = '$me'\"" | grep -q 1 ||
  su postgres -c "createuser --createdb --no-superuser --no-createrole $me"
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" | grep -q 1 ||
  su postgres -c "createdb -O $me test"
ok || { echo "iotgw: PostgreSQL still does not answer at $dsn" >&2; exit 1; }
echo "postgres: cluster $ver/main ready for the tests (trust on loopback for role $me only, database test)"
