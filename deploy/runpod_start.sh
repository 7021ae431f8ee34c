#!/usr/bin/env bash
# Entry point of deploy/runpod.Dockerfile: the model server on loopback, then
# the Runpod handler. If either exits, the container exits and Runpod replaces
# the worker, rather than a handler taking jobs for a server that is gone.
set -euo pipefail

# Weights on the endpoint's network volume, when it has one, download once.
if [[ -d /runpod-volume ]]; then
    export HF_HOME="${HF_HOME:-/runpod-volume/huggingface}"
fi

# VLLM_ARGS: extra flags (e.g. "--gpu-memory-utilization 0.92"), split on spaces.
# shellcheck disable=SC2086
vllm serve "$MODEL_ID" \
    --host 127.0.0.1 --port 8000 \
    --served-model-name "$MODEL_NAME" "$MODEL_ID" \
    --max-model-len "$MAX_MODEL_LEN" \
    ${VLLM_ARGS:-} &
server=$!

# The handler waits for the server's /v1/models before it takes any job.
/opt/handler/bin/python -u /app/runpod_handler.py &
handler=$!

status=0
wait -n "$server" "$handler" || status=$?
kill "$server" "$handler" 2>/dev/null || true
exit "$status"
