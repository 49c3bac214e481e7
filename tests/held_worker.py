"""A real worker process whose post stage holds each batch until the test releases it.

Run as ``python tests/held_worker.py NAME`` with the settings in the environment (as ``ponybot
worker``). Its image classifier, the first step of post-processing, marks :data:`HELD` in Redis
and then waits for :data:`RELEASE`: a test can kill or stop the worker exactly between the GPU
stage and the post stage.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import redis
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ponybot.queue import connect, resolve_redis_url
from ponybot.settings import load_settings
from worker.runner import run_worker
from worker.safety import Verdict
from worker.startup import build_runtime

HELD = "test:held"  #: one entry per batch whose images reached the post stage
RELEASE = "test:release"  #: set it to let the held post stage go on


class HeldClassifier:
    name = "held"

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def classify(self, images: Sequence[Image.Image], strictness: object = None) -> list[Verdict]:
        self.conn.rpush(HELD, len(images))
        while not self.conn.exists(RELEASE):
            time.sleep(0.05)
        return [Verdict(False) for _image in images]


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(None)
    settings = settings.model_copy(update={"worker": settings.worker.model_copy(update={"device": "cpu"})})
    conn = connect(resolve_redis_url(settings))
    runtime = build_runtime(settings, conn, name=sys.argv[1])
    runtime.classifier = HeldClassifier(conn)
    run_worker(runtime)


if __name__ == "__main__":
    main()
