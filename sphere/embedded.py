"""Background work for the embedded topology: a Celery worker and beat inside the web process.

With no Redis, `manage.py runsphere` serves HTTP and websockets, consumes the filesystem broker
in a worker thread and runs the database-backed beat schedule in another, all in one process,
so live events from background tasks reach the in-process channel layer.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from celery.beat import EmbeddedService
from celery.utils.nodenames import anon_nodename
from celery.worker import WorkController
from celery.worker import state as worker_state

log = logging.getLogger(__name__)


@dataclass
class BackgroundServices:
    worker: WorkController
    worker_thread: threading.Thread
    beat: threading.Thread | None

    def stop(self, timeout: float = 10.0) -> None:
        if self.beat is not None:
            self.beat.stop()
        self.worker.stop(in_sighandler=False)
        self.worker_thread.join(timeout)
        worker_state.should_terminate = None


def start_background(app, *, concurrency: int = 2, beat: bool = True) -> BackgroundServices:
    app.finalize()
    app.set_current()
    app.set_default()
    worker = WorkController(
        app=app,
        hostname=anon_nodename(),
        pool="threads",
        concurrency=concurrency,
        queues=["ingest", "training", "default"],
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel=logging.INFO,
    )
    thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
    thread.start()
    # EmbeddedService ignores beat_scheduler unless told: without scheduler_cls it would run an
    # empty file-based schedule instead of the operators' database schedule.
    beat_service = EmbeddedService(app, thread=True, scheduler_cls=app.conf.beat_scheduler) if beat else None
    if beat_service is not None:
        beat_service.daemon = True
        beat_service.start()
    log.info("embedded worker (%d threads) and %s started", concurrency, "beat" if beat else "no beat")
    return BackgroundServices(worker=worker, worker_thread=thread, beat=beat_service)
