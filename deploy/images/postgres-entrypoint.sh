#!/usr/bin/env bash
# The part of the official postgres image's entrypoint the stack relies on: initialise an empty
# PGDATA with POSTGRES_USER / POSTGRES_PASSWORD (scram-sha-256 over the network), run
# /docker-entrypoint-initdb.d/*.sh once against a local-only server, then exec postgres.
set -euo pipefail
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is empty; set it in .env}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-postgres}"
[[ "$POSTGRES_USER" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || { echo "postgres: POSTGRES_USER '$POSTGRES_USER' is not a plain role name" >&2; exit 1; }
[[ "$POSTGRES_DB" =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || { echo "postgres: POSTGRES_DB '$POSTGRES_DB' is not a plain database name" >&2; exit 1; }

if [ "$(id -u)" = "0" ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec gosu postgres bash "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 -D "$PGDATA" >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -k /var/run/postgresql" -w start >/dev/null
  if [ "$POSTGRES_DB" != "postgres" ]; then
    psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\""
  fi
  export PGHOST=/var/run/postgresql
  for script in /docker-entrypoint-initdb.d/*.sh; do
    [ -e "$script" ] || continue
    echo "postgres: running $script"
    bash "$script"
  done
  unset PGHOST
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi

exec "$@" -c listen_addresses='*' -k /var/run/postgresql
