#!/usr/bin/env bash
# Debian's PostgreSQL server binaries (initdb, pg_ctl, postgres) for the tests' real server,
# which tests/postgres.py starts on loopback in a temporary folder. Root; a no-op when present.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
