"""Serve Sphere: the ASGI app, plus (embedded topology) the Celery worker and beat in-process."""

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand

from sphere.celery import app as celery_app
from sphere.embedded import start_background


class Command(BaseCommand):
    help = "Serve Sphere over HTTP and websockets; with no Redis, also run tasks and schedules in-process."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--background",
            choices=["auto", "on", "off"],
            default="auto",
            help="Run the worker and beat in this process: auto = only when no external broker is configured.",
        )
        parser.add_argument("--worker-threads", type=int, default=2)

    def handle(self, host, port, background, worker_threads, **options):
        in_process = background == "on" or (background == "auto" and settings.EMBEDDED_BROKER)
        services = start_background(celery_app, concurrency=worker_threads) if in_process else None
        self.stdout.write(
            f"Sphere at http://{host}:{port}/ (background work {'in-process' if services else 'external'})"
        )
        try:
            uvicorn.run("sphere.asgi:application", host=host, port=port, log_level="info", lifespan="off")
        finally:
            if services is not None:
                services.stop()
