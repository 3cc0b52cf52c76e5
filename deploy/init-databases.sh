#!/usr/bin/env bash
# Creates one database and one login role per application on the stack's single PostgreSQL
# server: airflow (metadata + Celery results), mlflow (tracking + registry) and lockstep
# (records, change log, routing, request and feedback logs).
#
# The official postgres image runs this once, from /docker-entrypoint-initdb.d/, when its
# data volume is empty. It is idempotent so an operator can run it again on an existing
# volume (for example after adding an application) with:
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/10-init-databases.sh
# Passwords come from the environment (AIRFLOW_DB_PASSWORD, MLFLOW_DB_PASSWORD,
# LOCKSTEP_DB_PASSWORD); a re-run also resets each role's password to the current value.
# Each role may connect only to its own database.
set -euo pipefail

psql_admin=(psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}")

check_password() {
  local var="$1" value="${!1:-}"
  if [[ -z "$value" ]]; then
    echo "init-databases: $var is empty; set it in .env (see .env.example or run deploy/make-env.py)" >&2
    exit 1
  fi
}

create_app_database() {
  local name="$1" password_var="$2"
  # psql variables (:'x' quoted literal, :"x" quoted identifier) keep the values out of SQL syntax.
  "${psql_admin[@]}" -v app="$name" -v pw="${!password_var}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'app')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'app') \gexec
ALTER ROLE :"app" WITH LOGIN PASSWORD :'pw';
SELECT format('CREATE DATABASE %I OWNER %I', :'app', :'app')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'app') \gexec
REVOKE CONNECT ON DATABASE :"app" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"app" TO :"app";
SQL
  echo "init-databases: database and role '$name' ready"
}

# Refuse before creating anything, so a half-configured .env leaves no half-made cluster.
for var in AIRFLOW_DB_PASSWORD MLFLOW_DB_PASSWORD LOCKSTEP_DB_PASSWORD; do
  check_password "$var"
done
create_app_database airflow AIRFLOW_DB_PASSWORD
create_app_database mlflow MLFLOW_DB_PASSWORD
create_app_database lockstep LOCKSTEP_DB_PASSWORD
