# Runpod Serverless worker for the fleet's "runpod" tier: vLLM serves the GPU
# tier's model on loopback, and deploy/runpod_handler.py feeds it Runpod jobs.
#
# Build from the repository root and push to a registry Runpod can pull from:
#   docker build -f deploy/runpod.Dockerfile -t REGISTRY/tierfleet-runpod:TAG .
# Endpoint settings: a 48 GB GPU class (the FP8 30B model takes ~31 GB plus the
# KV cache for MAX_MODEL_LEN), a network volume so weights download once, and
# the endpoint's URL in fleet.toml ([hosts.runpod] url, context_window =
# MAX_MODEL_LEN). Pin the vLLM release you have tested.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.11.0
FROM ${VLLM_IMAGE}

# MODEL_NAME is the name the fleet uses for the model ([tiers.runpod] models);
# vLLM answers to it as well as to the Hugging Face id (--served-model-name).
# RUNPOD_DEBUG_LEVEL=INFO: at DEBUG the SDK logs every job's input and output,
# that is, users' prompts and answers.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MODEL_ID=Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8 \
    MODEL_NAME=qwen3-coder:30b \
    MAX_MODEL_LEN=65536 \
    MODEL_BASE_URL=http://127.0.0.1:8000/v1 \
    MODEL_READY_TIMEOUT_S=1800 \
    RUNPOD_DEBUG_LEVEL=INFO

# The handler gets its own virtualenv: the runpod SDK's dependencies must not
# move the versions vLLM was built against (they only talk over HTTP).
RUN python3 -m pip install uv \
 && uv venv /opt/handler \
 && uv pip install --python /opt/handler/bin/python \
        "runpod>=1.12,<2" "httpx>=0.27,<1" "pydantic>=2.6,<3"

COPY deploy/runpod_handler.py deploy/runpod_start.sh /app/

ENTRYPOINT ["/bin/bash", "/app/runpod_start.sh"]
