#!/bin/bash
# ClickHouse init script (mounted into /docker-entrypoint-initdb.d/, run once on an empty data
# directory, after 01-schema.sql): the read-only user `offloader` that the service connects as.
# The image's entrypoint runs it while the server listens on localhost only.
if [ -z "${OFFLOADER_CLICKHOUSE_PASSWORD:-}" ]; then
  echo "02-offloader-user.sh: OFFLOADER_CLICKHOUSE_PASSWORD is not set" >&2
  exit 1
fi
# The password as a ClickHouse string literal: backslashes and quotes escaped.
pw="${OFFLOADER_CLICKHOUSE_PASSWORD//\\/\\\\}"
pw="${pw//\'/\\\'}"
clickhouse-client --host 127.0.0.1 --user "${CLICKHOUSE_USER:-default}" --password "${CLICKHOUSE_PASSWORD:-}" \
  --multiquery <<SQL || { echo "02-offloader-user.sh: creating user offloader failed" >&2; exit 1; }
CREATE USER IF NOT EXISTS offloader IDENTIFIED WITH sha256_password BY '${pw}' DEFAULT DATABASE k2;
GRANT SELECT ON k2.* TO offloader;
SQL
