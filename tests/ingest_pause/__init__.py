"""A test-only app for worker processes: the metrics kind pauses once inside its transaction, so
a test can kill the worker at that exact point (tests/test_ingest_worker.py)."""
