#!/usr/bin/env bash
# One-shot set-up that every Airflow service waits for (docker-compose.yaml, airflow-init):
# migrate the metadata database and Lockstep's tables, give the admin user its password, and
# hand the shared folders to the user the Airflow services run as. Safe to run again: each
# step is idempotent.
#
# Runs as root in the container so it can chown the shared volumes; everything it creates
# ends up owned by ${AIRFLOW_UID}:0 (group 0 as in the official Airflow image, so any UID
# given by the operator can write).
set -euo pipefail

say() { echo "airflow-init: $*"; }
fail() { echo "airflow-init: $*" >&2; exit 1; }

airflow_uid="${AIRFLOW_UID:-50000}"
airflow_gid="${AIRFLOW_GID:-0}"  # group 0 as in the official image; the tests run it as themselves
admin_user="${AIRFLOW_ADMIN_USERNAME:-admin}"
passwords_file="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:?the compose file sets this; run through docker compose}"

for var in AIRFLOW_ADMIN_PASSWORD AIRFLOW__CORE__FERNET_KEY AIRFLOW__API__SECRET_KEY AIRFLOW__API_AUTH__JWT_SECRET; do
  value="${!var:-}"
  [[ -n "$value" ]] || fail "$var is empty; set it in .env (see .env.example or run deploy/make-env.py)"
done

if [[ "$airflow_uid" == "0" ]]; then
  say "WARNING: AIRFLOW_UID is 0; files in logs/ will be owned by root. Set AIRFLOW_UID=\$(id -u) in .env."
fi

say "migrating the metadata database"
airflow db migrate

# Lockstep's own tables (LOCKSTEP_DATABASE_URL), before any task uses them. lockstep-init runs
# the same command for the serving replicas; a PostgreSQL advisory lock lets both run at once.
say "migrating the Lockstep database"
lockstep db upgrade

# Rollout tasks run in this pool (lockstep.rollout.steps.ROLLOUT_POOL); without it the scheduler never
# queues them. Slots bound how many rollout looks run at once across the workers.
say "creating the pool lockstep_rollout"
airflow pools set lockstep_rollout "${LOCKSTEP_ROLLOUT_POOL_SLOTS:-8}" "Lockstep rollouts (review, shadow, canary, A/B, bandit looks)"

say "writing the password of admin user '$admin_user'"
mkdir -p "$(dirname "$passwords_file")"
# The simple auth manager reads {"user": "password"} from this file and only generates a
# random password for users missing from it; writing it here makes the login the one in .env.
python - "$passwords_file" "$admin_user" <<'PY'
import json, os, sys
path, user = sys.argv[1], sys.argv[2]
with open(path, "w", encoding="utf-8") as f:
    json.dump({user: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, f)
    f.write("\n")
PY
chmod 0660 "$passwords_file"

say "preparing shared folders for uid $airflow_uid"
logs_dir="${AIRFLOW_HOME:-/opt/airflow}/logs"
shared=("$logs_dir" "$(dirname "$passwords_file")" "${LOCKSTEP_HOME:-/data/home}")
index_store="${LOCKSTEP_INDEX_STORE:-/data/indexes}"
if [[ "$index_store" == /* ]]; then shared+=("$index_store"); fi  # not for s3://... stores
mkdir -p "${shared[@]}"
# Only what Airflow and Lockstep write to; dags/, plugins/ and config/ stay the operator's.
chown -R "$airflow_uid:$airflow_gid" "${shared[@]}"
chmod -R g+rwX "${shared[@]}"

say "done; log in at the api-server as '$admin_user' with AIRFLOW_ADMIN_PASSWORD from .env"
