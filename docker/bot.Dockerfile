# The Discord bot: no torch, starts in about a second.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY ponybot ponybot
COPY bot bot
COPY worker worker
RUN pip install -c requirements/lock.txt pip setuptools \
  && pip install -c requirements/lock.txt --no-build-isolation ".[bot]" && useradd --create-home --uid 10001 ponybot
USER ponybot
ENV PONYBOT_METRICS__BOT_PORT=9101
EXPOSE 9101
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9101/metrics', timeout=4)"
CMD ["ponybot", "bot"]
