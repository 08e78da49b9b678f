#!/bin/bash
# Entrypoint of the test stack's stand-in for clickhouse/clickhouse-server (docs/container.md,
# "Running the stack with podman"): tests/chhttp.py, the ClickHouse HTTP endpoint of the test suite, on port 8123 over
# a chDB directory in /var/lib/clickhouse. Like the real image's entrypoint, on an empty data
# directory it creates CLICKHOUSE_DB and runs /docker-entrypoint-initdb.d/*.sql. The users are
# chhttp's: CLICKHOUSE_USER with CLICKHOUSE_PASSWORD and, when OFFLOADER_CLICKHOUSE_PASSWORD is
# set, `offloader` (what 02-offloader-user.sh creates in the real server; *.sh is not run).
set -euo pipefail
data=/var/lib/clickhouse
mkdir -p "$data"
users=(--user "${CLICKHOUSE_USER:-default}:${CLICKHOUSE_PASSWORD:-}")
if [ -n "${OFFLOADER_CLICKHOUSE_PASSWORD:-}" ]; then
  users+=(--user "offloader:${OFFLOADER_CLICKHOUSE_PASSWORD}")
fi
python3 /usr/local/lib/chhttp.py --path "$data/chdb" --host 0.0.0.0 --port 8123 "${users[@]}" &
server=$!
trap 'kill -TERM "$server"; wait "$server"; exit 0' TERM INT
until python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8123/ping", timeout=2)' 2>/dev/null; do
  kill -0 "$server" 2>/dev/null || { echo "clickhouse stand-in: chhttp exited" >&2; exit 1; }
  sleep 0.5
done
ch() { clickhouse-client --user "${CLICKHOUSE_USER:-default}" --password "${CLICKHOUSE_PASSWORD:-}" "$@"; }
if [ ! -e "$data/.initialised" ]; then
  if [ -n "${CLICKHOUSE_DB:-}" ]; then
    ch --query "CREATE DATABASE IF NOT EXISTS \`${CLICKHOUSE_DB}\`"
  fi
  for script in /docker-entrypoint-initdb.d/*; do
    case $script in
      *.sql) echo "clickhouse stand-in: running $script" >&2; ch --multiquery <"$script" ;;
      *.sh) echo "clickhouse stand-in: skipping $script (users come from chhttp --user)" >&2 ;;
    esac
  done
  touch "$data/.initialised"
fi
echo "clickhouse stand-in: ready on 8123" >&2
wait "$server"
