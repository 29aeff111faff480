"""Settings for a worker whose metrics handler pauses once mid-transaction (tests/ingest_pause)."""

from sphere.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.ingest_pause"]  # noqa: F405
