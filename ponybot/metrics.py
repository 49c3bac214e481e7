"""Prometheus metrics: every name in one place, documented in the README's operator guide."""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ponybot.queue import generation_queue, workers_online

DURATION_BUCKETS = (0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)


class QueueCollector(Collector):
    """Read at scrape time from Redis: queue depth and workers online."""

    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depth, online = generation_queue(self.conn).count, workers_online(self.conn)
        except redis.RedisError:
            return
        yield GaugeMetricFamily("ponybot_queue_depth", "Jobs waiting in the generation queue", value=depth)
        yield GaugeMetricFamily("ponybot_workers_online", "Workers listening on the generation queue", value=online)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.wait = Histogram("ponybot_job_wait_seconds", "Time a job waited in the queue", registry=registry,
                              buckets=DURATION_BUCKETS)
        self.generation = Histogram("ponybot_generation_seconds", "Time to generate one job", registry=registry,
                                    buckets=DURATION_BUCKETS)
        self.images = Counter("ponybot_images_total", "Images generated (rate() gives images per second)",
                              registry=registry)
        self.withheld = Counter("ponybot_images_withheld_total", "Images withheld by an SFW policy",
                                registry=registry)
        self.failures = Counter("ponybot_failures_total", "Failed jobs by cause", ["cause"], registry=registry)
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


def serve(port: int, conn: redis.Redis) -> CollectorRegistry:
    """A registry with the queue collector, served over HTTP on ``port`` (0: not served)."""
    registry = CollectorRegistry()
    registry.register(QueueCollector(conn))
    if port:
        start_http_server(port, registry=registry)
    return registry
