# sonopacs: one image for every service (listener, worker, dashboard, migrations); the command picks.
#   docker build -t sonopacs .
#   docker run --rm -p 11112:11112 -v sonopacs-var:/var/lib/sonopacs sonopacs serve
FROM python:3.11-slim-bookworm

# CPU wheels by default; pass --build-arg TORCH_INDEX_URL=... for a CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini reaps children and forwards SIGTERM, so `sonopacs serve` and the listener shut down cleanly.
# dcmtk gives echoscu/storescu inside the container for checks against the PACS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini dcmtk libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /opt/sonopacs
COPY . .
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/sonopacs --create-home sonopacs \
    && mkdir -p /var/lib/sonopacs/storage \
    && chown -R sonopacs:sonopacs /var/lib/sonopacs

USER sonopacs
WORKDIR /var/lib/sonopacs
ENV SONOPACS_STORAGE__ROOT=/var/lib/sonopacs/storage \
    SONOPACS_DATABASE__URL=sqlite:////var/lib/sonopacs/sonopacs.db \
    SONOPACS_DASHBOARD__HOST=0.0.0.0
VOLUME ["/var/lib/sonopacs"]
EXPOSE 11112 8080

ENTRYPOINT ["/usr/bin/tini", "--", "sonopacs"]
CMD ["serve"]
