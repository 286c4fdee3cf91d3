# swaa-serve image. GPU (default): CUDA runtime + torch (CUDA wheels) + flash-attn-4.
# CPU demo:  docker build --build-arg VARIANT=cpu -t swaa-serve:cpu .
# The embedded SmolLM2-135M-Instruct is baked in (it is a pip package); mount real models at /models
# and pass --model /models/<folder or .gguf> (or SWAA_MODEL). Every `swaa serve` flag can also be
# given as SWAA_<FLAG> (SWAA_WINDOW=1024, SWAA_FA_DECODE=all, SWAA_PORT=50051, ...).
ARG VARIANT=gpu
ARG CUDA_BASE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG CPU_BASE=python:3.12-slim-bookworm

# ---- build: wheels for the service and its dependencies -------------------------------------------
FROM python:3.12-slim-bookworm AS build
ARG VARIANT
WORKDIR /src
COPY pyproject.toml README.md no-deps.txt ./
COPY engine engine
COPY server server
COPY client client
# the service's own wheel, torch, and (in /wheels-nodeps) what the Makefile installs with --no-deps; the CPU image
# installs what `make` installs (.[cpu]); tests/deploy/test_dockerfile.py runs these steps in a clean venv
RUN python -m pip install --no-cache-dir --upgrade "pip>=25" "build>=1.2" \
 && python -m build --wheel --outdir /wheels . \
 && if [ "$VARIANT" = cpu ]; then \
        python -m pip wheel --no-cache-dir --wheel-dir /wheels "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu; \
    else \
        python -m pip wheel --no-cache-dir --wheel-dir /wheels "torch>=2.11" flash-attn-4; \
    fi \
 && python -m pip wheel --no-cache-dir --wheel-dir /wheels-nodeps --no-deps -r no-deps.txt

# ---- runtime images -------------------------------------------------------------------------------
FROM ${CUDA_BASE} AS runtime-gpu
RUN apt-get update && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/* && python3.12 -m venv /opt/venv

FROM ${CPU_BASE} AS runtime-cpu
RUN python -m venv /opt/venv

FROM runtime-${VARIANT} AS runtime
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    SWAA_HOST=0.0.0.0 SWAA_PORT=50051 SWAA_METRICS_PORT=9090
COPY --from=build /wheels /wheels
COPY --from=build /wheels-nodeps /wheels-nodeps
# the service's wheel again with its `structured` extra (xgrammar: structured output's token masks); the extra's pin
# stays in pyproject.toml, the one place it is written
RUN pip install --no-cache-dir /wheels/*.whl \
 && set -- /wheels/swaa_serve-*.whl && pip install --no-cache-dir "$1[structured]" \
 && pip install --no-cache-dir --no-deps /wheels-nodeps/*.whl \
 && rm -rf /wheels /wheels-nodeps \
 && useradd --uid 10001 --create-home --shell /usr/sbin/nologin swaa && mkdir -p /models && chown swaa /models
USER 10001
VOLUME ["/models"]
EXPOSE 50051 9090
# grpc.health.v1 for Docker's own health check; Kubernetes uses native gRPC probes instead
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s CMD ["swaa", "health", "--target", "127.0.0.1:50051"]
ENTRYPOINT ["swaa", "serve"]
CMD []
