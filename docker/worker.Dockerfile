# A GPU worker: CUDA torch from the base image, the model cached on a volume.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/models/hf
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ponybot ponybot
COPY bot bot
COPY worker worker
RUN pip install ".[worker,safety]" && useradd --create-home --uid 10001 ponybot \
  && mkdir -p /models && chown ponybot /models
USER ponybot
ENV PONYBOT_MODEL__CACHE_DIR=/models PONYBOT_METRICS__WORKER_PORT=9100
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=4)"
# The worker fetches the model and the image tagger (safety.tagger) into /models at start, before its
# first job; `docker compose run worker ponybot safety fetch` does the tagger ahead of time.
CMD ["ponybot", "worker"]
