"""Sphere edge client: on-device inference, label-free drift detection and offline-first sync.

Pure Python + numpy (LiteRT optional). It never imports Django or anything of the server.
"""

__version__ = "0.1.0"
