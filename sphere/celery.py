"""The Celery application. Settings live in sphere/settings.py under the CELERY_ prefix."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sphere.settings")

app = Celery("sphere")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name) for name in ("ingest", "training", "default")]
app.autodiscover_tasks()
