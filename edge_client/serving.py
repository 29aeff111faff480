"""The pipeline as a device's inference loop and its bundle manager share it.

The sync thread swaps in a new bundle while the inference loop runs: the lock makes the swap of
transform and KNN atomic, so no sample meets a new transform with the old reference set. Used by
``python -m edge_client run`` and by the fleet simulator (sphere/demo/simulator.py).
"""

from __future__ import annotations

import threading
from pathlib import Path


class ServingPipeline:
    def __init__(self, pipeline):
        self.pipeline, self.bundles = pipeline, None  # bundles: the BundleManager, once made
        self._lock = threading.Lock()

    def process(self, image):
        with self._lock:
            return self.pipeline.process(image)

    def load(self, path: Path) -> None:
        """BundleManager's loader: raising here makes it keep (or go back to) the old bundle."""
        from edge_client.pipeline import load_bundle  # numpy and the model code, only once needed

        transform, knn = load_bundle(path)
        current = self.bundles.current() if self.bundles else None
        with self._lock:
            self.pipeline.use_bundle(transform, knn, current.version if current else "")


class ShuttingDownTelemetry:
    """Telemetry whose samples say the device is going away (its last heartbeat)."""

    def __init__(self, telemetry):
        self.telemetry = telemetry

    def sample(self) -> dict:
        return {**self.telemetry.sample(), "shutting_down": True}
