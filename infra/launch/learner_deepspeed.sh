#!/usr/bin/env bash
# `vlac learner run` on several nodes through the DeepSpeed launcher (pdsh over ssh), run on
# the head node, from a folder that every node has at the same path (a shared file system):
#   HOSTFILE=hosts STORE_ROOT=/shared/store OUT=/shared/learner \
#     CRITIC=tcp://critic-host:5560 OBJECT_STORE='s3://vlac/lab-a?endpoint=http://s3-host:9000' \
#     FLEET_URL=postgresql://vlac@db-host:5432/vlac infra/launch/learner_deepspeed.sh
# Rank 0 reads the store, asks the critic and publishes; every rank trains on its share of each
# minibatch (NCCL on GPUs). --no_local_rank: the learner takes its rank from the environment
# and its CLI has no --local_rank flag. S3 credentials and PGPASSWORD reach the other nodes
# only through ~/.deepspeed_env (one NAME=VALUE a line) or their own ~/.aws / ~/.pgpass.
# DRY_RUN=1 prints the command instead of running it (tests/infra/test_deploy_files.py).
set -euo pipefail
HOSTFILE=${HOSTFILE:-infra/launch/hostfile.example}
MASTER_ADDR=${MASTER_ADDR:-$(awk '!/^[[:space:]]*(#|$)/ {print $1; exit}' "$HOSTFILE")}
MASTER_PORT=${MASTER_PORT:-29500}
DEEPSPEED=${DEEPSPEED:-deepspeed}
STORE_ROOT=${STORE_ROOT:-/shared/store}
OUT=${OUT:-/shared/learner}
INIT=${INIT:-/shared/models/actor/actor.pt}
FEATURES=${FEATURES:-/shared/features}
CRITIC=${CRITIC:-tcp://critic-host:5560}
OBJECT_STORE=${OBJECT_STORE:-s3://vlac/lab-a}
SIGNING_KEY=${SIGNING_KEY:-/shared/keys/publisher/publisher.ed25519}
ZERO_STAGE=${ZERO_STAGE:-2}
# Fleet state: PostgreSQL when FLEET_URL is set, else SQLite in a shared folder.
if [[ -n ${FLEET_URL:-} ]]; then
  fleet=(--publish.publisher.fleet-url "$FLEET_URL")
else
  fleet=(--publish.publisher.fleet-dir "${FLEET_DIR:-/shared/fleet}")
fi

run() {
  if [[ -n ${DRY_RUN:-} ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    exec "$@"
  fi
}

run "$DEEPSPEED" --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  --no_local_rank --module vlac.infra.cli learner run \
  --store-root "$STORE_ROOT" --init "$INIT" --out "$OUT" --features "$FEATURES" \
  --zero-stage "$ZERO_STAGE" --rewards.service "$CRITIC" --object-store "$OBJECT_STORE" \
  --publish.enabled --publish.publisher.object-store "$OBJECT_STORE" \
  --publish.publisher.signing-key "$SIGNING_KEY" "${fleet[@]}" "$@"
