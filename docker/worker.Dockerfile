# A GPU worker: PyPI's CUDA build of the torch release the Makefile pins, with the CUDA libraries the
# lock pins for it (the host needs only the NVIDIA driver and container toolkit); the model cached on a volume.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HOME=/models/hf
WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY ponybot ponybot
COPY bot bot
COPY worker worker
RUN pip install -c requirements/lock.txt pip setuptools \
  && pip install -c requirements/lock.txt -r requirements/torch.txt \
  && pip install -c requirements/lock.txt --no-build-isolation ".[worker,safety]" && useradd --create-home --uid 10001 ponybot \
  && mkdir -p /models && chown ponybot /models
USER ponybot
ENV PONYBOT_MODEL__CACHE_DIR=/models PONYBOT_METRICS__WORKER_PORT=9100
EXPOSE 9100
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=4)"
# The worker fetches the model and the image tagger (safety.tagger) into /models at start, before its
# first job; `docker compose run worker ponybot safety fetch` does the tagger ahead of time.
CMD ["ponybot", "worker"]
