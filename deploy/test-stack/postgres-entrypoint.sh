#!/bin/bash
# Entrypoint of the test stack's stand-in for postgres:15 (docs/container.md, "Running the
# stack with podman"): Debian's postgresql-15, set up the way the official image's
# docker-entrypoint.sh does it. On an empty PGDATA: initdb with the superuser POSTGRES_USER and
# POSTGRES_PASSWORD (scram-sha-256 over TCP), /docker-entrypoint-initdb.d/*.sh run against a
# server on the Unix socket only; then the server on every interface, as user postgres.
set -euo pipefail
export PGDATA=${PGDATA:-/var/lib/postgresql/data}
export POSTGRES_USER=${POSTGRES_USER:-postgres}
bin=/usr/lib/postgresql/15/bin
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD:-}" ] || { echo "postgres stand-in: POSTGRES_PASSWORD is not set" >&2; exit 1; }
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  chown postgres "$pwfile"
  as_postgres "$bin/initdb" --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 >&2
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  as_postgres "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" -w start >&2
  for script in /docker-entrypoint-initdb.d/*; do
    case $script in
      *.sh) echo "postgres stand-in: running $script" >&2; as_postgres env PGHOST=/var/run/postgresql bash "$script" ;;
      *.sql) echo "postgres stand-in: running $script" >&2; as_postgres psql -v ON_ERROR_STOP=1 -h /var/run/postgresql -U "$POSTGRES_USER" -d postgres -f "$script" ;;
    esac
  done
  as_postgres "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >&2
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$PGDATA" \
  -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql
