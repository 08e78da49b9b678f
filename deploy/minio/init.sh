#!/bin/sh
# One-shot MinIO setup for the compose stack (runs in the minio/mc image, exits 0 when done):
# the bucket `cold` that holds the Iceberg warehouse (s3://cold/warehouse), and the user that
# offloader writes with, allowed only on that bucket (deploy/minio/offloader-policy.json).
# Safe to run again.
set -eu
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${OFFLOADER_S3_ACCESS_KEY:?}" "${OFFLOADER_S3_SECRET_KEY:?}"

mc alias set local "${MINIO_URL:-http://minio:9000}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing local/cold
mc admin user add local "$OFFLOADER_S3_ACCESS_KEY" "$OFFLOADER_S3_SECRET_KEY"
mc admin policy create local offloader-cold /etc/minio-init/offloader-policy.json
# Attaching a policy that is already attached is an error; the end state is what matters.
if ! mc admin policy attach local offloader-cold --user "$OFFLOADER_S3_ACCESS_KEY" 2>/dev/null; then
  case "$(mc admin user info local "$OFFLOADER_S3_ACCESS_KEY")" in
    *offloader-cold*) ;;
    *) echo "minio-init: could not attach policy offloader-cold to $OFFLOADER_S3_ACCESS_KEY" >&2; exit 1 ;;
  esac
fi
echo "minio-init: bucket cold and user $OFFLOADER_S3_ACCESS_KEY ready"
