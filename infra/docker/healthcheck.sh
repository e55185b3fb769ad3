#!/usr/bin/env bash
# HEALTHCHECK of the cloud image: the service's own TCP port accepts a connection.
# VLAC_HEALTH_PORT names it (ingest 5555, critic 5560, announcer 5570); unset, the check
# passes (the learner listens on nothing; its liveness is the process itself).
set -euo pipefail
port=${VLAC_HEALTH_PORT:-}
if [[ -z $port ]]; then
  exit 0
fi
exec 3<>"/dev/tcp/127.0.0.1/$port"
