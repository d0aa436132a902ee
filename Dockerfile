# syntax=docker/dockerfile:1.7
# BiomedSearch service image.
#   CPU (default):  docker build -t biomedsearch .
#   GPU:            docker build --build-arg VARIANT=gpu -t biomedsearch:gpu .
# VARIANT=cpu installs PyTorch's CPU wheels and faiss-cpu; VARIANT=gpu installs the CUDA wheels
# of PyTorch from PyPI and faiss-gpu (never both faiss packages: they share the `faiss` module).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ARG VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN if [ "$VARIANT" = "gpu" ]; then \
        pip install torch==2.14.1 torchvision==0.29.1; \
    else \
        pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY indexer ./indexer
COPY training ./training
# faiss-cpu is a core dependency; the GPU image swaps it for faiss-gpu (same `faiss` module, never both).
RUN pip install . \
    && if [ "$VARIANT" = "gpu" ]; then pip uninstall -y faiss-cpu && pip install faiss-gpu==1.15.1; fi

FROM python:${PYTHON_VERSION}-slim AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="biomedsearch" \
      org.opencontainers.image.description="Semantic search over biomedical figures (${VARIANT})"
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 biomed \
    && useradd --system --uid 10001 --gid biomed --home-dir /data --shell /usr/sbin/nologin biomed \
    && mkdir -p /data && chown biomed:biomed /data && chmod 0700 /data \
    && { find / -xdev -type f -perm /6000 -exec chmod a-s {} + 2>/dev/null || true; }  # no setuid/setgid programs
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/data/hf-cache \
    BIOMEDSEARCH_DATA_HOME=/data \
    BIOMEDSEARCH_HOST=0.0.0.0 \
    BIOMEDSEARCH_PORT=8000
# An unprivileged user (numeric, so that runAsNonRoot-style checks can verify it); the compose
# file adds a read-only root, no capabilities and no-new-privileges.
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["biomedsearch"]
CMD ["serve"]
