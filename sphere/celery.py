"""The Celery application. Settings live in sphere/settings.py under the CELERY_ prefix."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sphere.settings")

# DjangoTask adds delay_on_commit(): enqueue only once the row the task reads is committed.
app = Celery("sphere", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name) for name in ("ingest", "training", "default")]
app.autodiscover_tasks()
