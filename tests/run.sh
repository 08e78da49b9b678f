#!/usr/bin/env bash
# Sets everything up and runs the whole test suite (pytest) against real PostgreSQL and chDB.
# Used by README's second command and by .ci/run. Safe to run again: it reuses .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# PostgreSQL: the tests need a real server (OFFLOADER_TEST_PG_DSN, default 127.0.0.1:5432).
if [ -z "${OFFLOADER_TEST_PG_DSN:-}" ]; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
      echo "starting PostgreSQL" >&2
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
      for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
    fi
  fi
  pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not reachable at 127.0.0.1:5432 (set OFFLOADER_TEST_PG_DSN)" >&2; exit 1; }
fi

# Prometheus' promtool checks the alert rules; install it from Debian where possible.
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -q prometheus >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q prometheus >/dev/null 2>&1)) || true
fi

# Chromium (Debian's) loads the service's page in tests/test_page.py.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) || true
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# uv (from PyPI) installs in seconds what pip takes half a minute for; plain pip stays the
# fallback, and OFFLOADER_INSTALLER=pip forces it.
if [ "${OFFLOADER_INSTALLER:-uv}" = uv ] && { [ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q uv >/dev/null 2>&1; } \
  && .venv/bin/uv pip install -q --python .venv/bin/python -e '.[test]'; then
  :
else
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
fi
.venv/bin/python -c 'import offloader, chdb, pyiceberg, psycopg2' 

export OFFLOADER_REQUIRE_PG=1
# One process by default; OFFLOADER_TEST_WORKERS=2 runs two pytest-xdist workers, a test file
# each (module fixtures and a file's own servers stay in one process).
exec .venv/bin/python -m pytest -n "${OFFLOADER_TEST_WORKERS:-0}" --dist loadfile "$@"
