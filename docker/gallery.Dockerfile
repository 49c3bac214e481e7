# The community gallery: web site and ingest loop, no torch. SQLite and the image folder live in /data
# (a volume); for several replicas use PostgreSQL (gallery.database_url) and S3 (gallery.store = "s3").
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY ponybot ponybot
COPY bot bot
COPY worker worker
COPY gallery gallery
RUN pip install -c requirements/lock.txt pip setuptools \
  && pip install -c requirements/lock.txt --no-build-isolation ".[gallery]" && useradd --create-home --uid 10001 ponybot \
  && mkdir -p /data && chown ponybot /data
USER ponybot
ENV PONYBOT_GALLERY__ENABLED=true PONYBOT_GALLERY__HOST=0.0.0.0 PONYBOT_GALLERY__PORT=8080 \
    PONYBOT_GALLERY__DATABASE_URL=sqlite:////data/gallery.db PONYBOT_GALLERY__STORE_DIR=/data/images
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"
CMD ["ponybot", "gallery"]
