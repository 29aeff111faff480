"""Server metrics in Prometheus format: request rates and latencies, queue depths, fleet counts.

Request metrics are recorded by a middleware labelled with the URL *route* (``api/v1/devices/
<pk>/``), never the raw path, so label cardinality stays bounded. Queue depths and fleet counts
are read at scrape time by a collector. With several web processes, set
PROMETHEUS_MULTIPROC_DIR so their counters are merged.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from django.conf import settings
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

log = logging.getLogger(__name__)
disable_created_metrics()  # the *_created series double the output and no dashboard reads them

REQUESTS = Counter("sphere_http_requests", "HTTP requests served", ["method", "route", "status"])
LATENCY = Histogram(
    "sphere_http_request_duration_seconds",
    "Time to serve an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class RequestMetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        route = match.route if match is not None else "unmatched"
        LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        return response


class StateCollector(Collector):
    """Fleet counts by status and broker queue depths, computed when Prometheus scrapes."""

    def collect(self):
        from devices.services import fleet_counts

        fleet = GaugeMetricFamily("sphere_devices", "Devices by status", labels=["status"])
        for status, count in fleet_counts().items():
            if status != "total":
                fleet.add_metric([status], count)
        yield fleet
        depth = GaugeMetricFamily("sphere_queue_depth", "Tasks waiting in a broker queue", labels=["queue"])
        for queue, count in queue_depths().items():
            depth.add_metric([queue], count)
        yield depth


def queue_depths() -> dict[str, int]:
    names = ("ingest", "training", "default")
    try:
        if settings.EMBEDDED_BROKER:
            folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
            files = [entry.name for entry in os.scandir(folder)]
            return {name: sum(1 for f in files if f.endswith(f".{name}.msg")) for name in names}
        from sphere.celery import app

        with app.connection_for_read() as connection:
            client = connection.channel().client
            return {name: int(client.llen(name)) for name in names}
    except Exception:  # a metrics scrape must not fail because the broker is down
        log.warning("queue depths unavailable", exc_info=True)
        return {}


def render() -> bytes:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # request metrics merged from every process
    else:
        registry.register(REGISTRY)
    registry.register(StateCollector())
    return generate_latest(registry)
