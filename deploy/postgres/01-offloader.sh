#!/bin/bash
# PostgreSQL init script (mounted into /docker-entrypoint-initdb.d/, run once on an empty data
# directory): the login role `offloader` and the database `offloader` it owns, which holds both
# the Iceberg SQL catalog (PyIceberg creates its tables) and offloader's state (catalog/*.sql,
# applied by offloader at start).
set -euo pipefail
if [ -z "${OFFLOADER_POSTGRES_PASSWORD:-}" ]; then
  echo "01-offloader.sh: OFFLOADER_POSTGRES_PASSWORD is not set" >&2
  exit 1
fi
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres -v pw="$OFFLOADER_POSTGRES_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE offloader LOGIN PASSWORD %L', :'pw')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'offloader') \gexec
SELECT 'CREATE DATABASE offloader OWNER offloader'
WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'offloader') \gexec
SQL
