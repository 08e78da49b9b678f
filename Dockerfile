# syntax=docker/dockerfile:1
# offloader: ClickHouse -> Apache Iceberg, exactly once. docs/container.md describes the image.
#
#   docker build -t offloader .
#   docker build --build-arg VARIANT=slim -t offloader:slim .   # without the embedded engine (chDB)
#   docker run --rm -p 9108:9108 -v "$PWD/my.toml:/etc/offloader/offloader.toml:ro" \
#     -e OFFLOADER__SOURCE__PASSWORD=... offloader --config /etc/offloader/offloader.toml run

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# build: a virtualenv in /opt/offloader with offloader and its dependencies (all binary wheels).
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/offloader
WORKDIR /src

# Dependencies first, from pyproject.toml alone (a placeholder package and README), so that this
# layer is reused while only offloader's own code or its README changes.
COPY pyproject.toml ./
RUN mkdir offloader \
 && echo '__version__ = "0"' > offloader/__init__.py \
 && : > README.md \
 && /opt/offloader/bin/pip install . \
 && /opt/offloader/bin/pip uninstall -y offloader \
 && rm -rf offloader build ./*.egg-info README.md

COPY README.md ./
COPY offloader/ offloader/
COPY catalog/ catalog/
# The state schema (catalog/*.sql) lives outside the Python package; state.py also looks for it
# in offloader/sql/, so put it there when the wheel does not carry it.
# (python -I: the installed package, never ./offloader from the build context.)
RUN /opt/offloader/bin/pip install --no-deps . \
 && pkg="$(/opt/offloader/bin/python -I -c 'import offloader, pathlib; print(pathlib.Path(offloader.__file__).parent)')" \
 && case "$pkg" in /opt/offloader/*) ;; *) echo "offloader imported from $pkg" >&2; exit 1 ;; esac \
 && if ! ls "$pkg"/sql/*.sql >/dev/null 2>&1; then mkdir -p "$pkg/sql" && cp catalog/*.sql "$pkg/sql/"; fi \
 && cd / \
 && /opt/offloader/bin/python -I -c 'import offloader.cli, offloader.server; from offloader.state import schema_files; assert schema_files()' \
 && /opt/offloader/bin/offloader --version

# VARIANT=slim: without the embedded ClickHouse engine, for a remote ClickHouse (an http(s)://
# source): chDB and what only it needs (pandas, numpy) are removed, about two thirds of the
# virtualenv. A chdb:// source, `offloader check` and the daily consistency check need chDB and
# say so in the slim image (docs/container.md). Declared here, after the dependency layers, so
# that both variants share them.
ARG VARIANT=full
RUN case "$VARIANT" in \
      full) ;; \
      slim) /opt/offloader/bin/pip uninstall -y chdb chdb-core pandas numpy \
         && cd / && /opt/offloader/bin/python -I -c 'import offloader.cli, offloader.server, offloader.app, clickhouse_connect, pyiceberg.io.pyarrow' \
         && if /opt/offloader/bin/python -I -c 'import chdb' 2>/dev/null; then echo "chdb is still importable" >&2; exit 1; fi ;; \
      *) echo "VARIANT=$VARIANT: expected full or slim" >&2; exit 1 ;; \
    esac

# ---------------------------------------------------------------------------------------------
# runtime: the virtualenv on a clean slim image, run as an unprivileged user.
FROM ${PYTHON_IMAGE} AS runtime

ARG VARIANT=full
LABEL org.opencontainers.image.title="offloader" \
      org.opencontainers.image.description="Keeps a cold tier of Apache Iceberg tables exact and complete from ClickHouse." \
      offloader.variant="${VARIANT}"

ENV PATH=/opt/offloader/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OFFLOADER__SERVER__HOST=0.0.0.0 \
    PROMETHEUS_DISABLE_CREATED_SERIES=True \
    OFFLOADER_DATA_DIR=/var/lib/offloader

RUN groupadd --system --gid 10001 offloader \
 && useradd --system --uid 10001 --gid offloader --home-dir /var/lib/offloader --create-home \
      --shell /usr/sbin/nologin offloader \
 && mkdir -p /etc/offloader

COPY --from=build /opt/offloader /opt/offloader

USER 10001:10001
WORKDIR /var/lib/offloader

# /metrics, /healthz, /readyz, /status
EXPOSE 9108

# Liveness: /healthz answers 200 while the scheduler ticks; urlopen raises (exit 1) on 503 or
# when nothing listens. The port follows OFFLOADER__SERVER__PORT when that is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('OFFLOADER__SERVER__PORT', '9108'), timeout=4)"]

# SIGTERM: the cycle in flight finishes or abandons its window before the commit, then exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["offloader"]
CMD ["run"]
