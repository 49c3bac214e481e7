"""Prometheus metrics: every name in one place, documented in the README's operator guide."""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ponybot.keys import DEFAULT_MODEL_NAME
from ponybot.queue import generation_queue
from ponybot.workers import models_online

DURATION_BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)


class QueueCollector(Collector):
    """Read at scrape time from Redis: queue depth and workers online, per model."""

    def __init__(self, conn: redis.Redis, models: list[str]) -> None:
        self.conn = conn
        self.models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("ponybot_queue_depth", "Jobs waiting in a model's queue", labels=["model"])
        online = GaugeMetricFamily("ponybot_workers_online", "Workers holding a model", labels=["model"])
        try:
            held = models_online(self.conn)
            for model in self.models:
                depth.add_metric([model], generation_queue(self.conn, model).count)
                online.add_metric([model], len(held.get(model, [])))
        except redis.RedisError:
            return
        yield depth
        yield online


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.wait = Histogram("ponybot_job_wait_seconds", "Time a job waited in the queue", ["model"],
                              registry=registry, buckets=DURATION_BUCKETS)
        self.generation = Histogram("ponybot_generation_seconds", "Time to generate one job", ["model"],
                                    registry=registry, buckets=DURATION_BUCKETS)
        self.images = Counter("ponybot_images_total", "Images generated (rate() gives images per second)", ["model"],
                              registry=registry)
        self.withheld = Counter("ponybot_images_withheld_total", "Images withheld by an SFW policy", ["model"],
                                registry=registry)
        self.failures = Counter("ponybot_failures_total", "Failed jobs by cause", ["model", "cause"],
                                registry=registry)
        self.safety_missing = Gauge("ponybot_safety_classifier_missing",
                                    "1 while a configured image classifier is not loaded (SFW fails closed)",
                                    ["classifier"], registry=registry)
        self.unchecked = Counter("ponybot_images_unchecked_total",
                                 "Images that went without the complete image check (withheld in SFW channels)",
                                 registry=registry)
        self.gpu_memory = Gauge("ponybot_gpu_memory_bytes", "Peak GPU memory allocated by this worker",
                                registry=registry)


class BotMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.commands = Counter("ponybot_commands_total", "Slash commands received", ["command"], registry=registry)
        self.deliveries = Counter("ponybot_deliveries_total", "Results posted to Discord", ["kind", "route"],
                                  registry=registry)
        self.delivery_errors = Counter("ponybot_delivery_errors_total", "Posts Discord refused or failed",
                                       registry=registry)
        self.undelivered = Counter("ponybot_undelivered_total",
                                   "Results the bot could not post in their channel (it lacks a permission there)",
                                   ["guild", "channel"], registry=registry)


def serve(port: int, conn: redis.Redis, models: list[str] | None = None) -> CollectorRegistry:
    """A registry with the queue collector of ``models``, served over HTTP on ``port`` (0: not served)."""
    registry = CollectorRegistry()
    registry.register(QueueCollector(conn, models or [DEFAULT_MODEL_NAME]))
    if port:
        start_http_server(port, registry=registry)
    return registry
