#!/bin/sh
# SeaweedFS for the compose stack (the chrislusf/seaweedfs image runs this as its entrypoint):
# one `weed mini` process with the S3 API (bucket `cold`, for the SQL catalog's warehouse) and
# an Iceberg REST catalog (table bucket `warehouse`) whose OAuth2 client credentials are the S3
# access key and secret. The S3 identity is written from the environment on every start:
#   OFFLOADER_S3_ACCESS_KEY   the access key (offloader's catalog s3.access-key-id)
#   OFFLOADER_S3_SECRET_KEY   its secret, at least 8 characters
# The flags are those of the test suite's server (tests/storage.py, SeaweedFS.start);
# tests/test_stack.py checks that they agree and runs this script against a real weed.
#
# Overridable for a run outside the container (tests/test_stack.py does):
#   SEAWEEDFS_DIR             data directory, also holding identities.json     (/data)
#   SEAWEEDFS_IP              address the servers advertise to each other       (seaweedfs)
#   SEAWEEDFS_BIND            address they listen on                            (0.0.0.0)
#   SEAWEEDFS_S3_PORT         S3 API                                            (8333)
#   SEAWEEDFS_ICEBERG_PORT    Iceberg REST catalog                              (8181)
#   SEAWEEDFS_FILER_PORT      filer HTTP (the healthcheck looks for the bucket)  (8888)
# Any arguments are passed on to `weed mini` (e.g. -master.port=...).
set -eu

fail() {
  echo "seaweedfs: $*; not starting" >&2
  exit 1
}

dir=${SEAWEEDFS_DIR:-/data}
access_key=${OFFLOADER_S3_ACCESS_KEY:-}
secret_key=${OFFLOADER_S3_SECRET_KEY:-}

[ -n "$access_key" ] || fail "OFFLOADER_S3_ACCESS_KEY is not set (the S3 access key offloader uses)"
case $access_key in
  *[!A-Za-z0-9._-]*) fail "OFFLOADER_S3_ACCESS_KEY may hold only letters, digits, '.', '_' and '-'" ;;
esac
[ -n "$secret_key" ] || fail "OFFLOADER_S3_SECRET_KEY is not set (the secret of S3 access key $access_key)"
[ "${#secret_key}" -ge 8 ] || fail "OFFLOADER_S3_SECRET_KEY is too short: at least 8 characters are needed"
case $secret_key in
  *[[:cntrl:]]*) fail "OFFLOADER_S3_SECRET_KEY must not contain control characters" ;;
esac

# JSON string escapes for the secret (the access key has no character that needs one).
secret_json=$(printf '%s' "$secret_key" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')

mkdir -p "$dir"
[ -w "$dir" ] || fail "$dir is not writable by user $(id -un 2>/dev/null || id -u)"
config=$dir/identities.json
umask 077
printf '{"identities": [{"name": "%s", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}\n' \
  "$access_key" "$access_key" "$secret_json" >"$config.tmp"
mv -f "$config.tmp" "$config"
echo "seaweedfs: S3 identity $access_key written to $config" >&2

exec weed -logtostderr=true mini \
  -dir="$dir" -ip="${SEAWEEDFS_IP:-seaweedfs}" -ip.bind="${SEAWEEDFS_BIND:-0.0.0.0}" \
  -bucket=cold -tableBucket=warehouse -s3.config="$config" \
  -master.telemetry=false -admin.ui=false -webdav=false -s3.port.lance=0 \
  -s3.port="${SEAWEEDFS_S3_PORT:-8333}" -s3.port.iceberg="${SEAWEEDFS_ICEBERG_PORT:-8181}" \
  -filer.port="${SEAWEEDFS_FILER_PORT:-8888}" \
  "$@"
