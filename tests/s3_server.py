"""A real S3-protocol server on loopback for tests: moto's server in a subprocess.

It speaks S3 over HTTP on 127.0.0.1, so django-storages and boto3 go through their whole stack
(signing, multipart transfers, retries) exactly as against MinIO or AWS. conftest.py starts one
per test session (``s3_server``) and gives each test fresh buckets (``s3_storages``).

What moto enforces and what it does not, as found with moto 5.2.5: an unsigned GET of a private
object is refused (403), a public-read object is served; signatures and expiry times of signed
URLs are not checked, and an unsigned listing of a private bucket is answered.

Usage::

    with running_s3_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, **S3_CREDENTIALS).create_bucket(Bucket="b-1")
"""

from __future__ import annotations

import functools
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
REGION = "us-east-1"
# Dummy keys: moto accepts any; boto3 must not look for real ones in the environment.
S3_CREDENTIALS = {"aws_access_key_id": "sphere-test", "aws_secret_access_key": "sphere-test-secret"}
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextmanager
def running_s3_server(attempts: int = 3) -> Iterator[str]:
    """Start moto's S3 server, yield its endpoint URL once it answers, always stop it."""
    with tempfile.TemporaryDirectory(prefix="sphere-s3-") as folder:
        log_path = Path(folder) / "moto.log"
        process, endpoint = _start(log_path, attempts)
        try:
            yield endpoint
        finally:
            _stop(process)


def reset(endpoint: str) -> None:
    """Forget every bucket and object (moto's reset API): the next test starts empty."""
    _request(endpoint, "POST", "/moto-api/reset")


def _start(log_path: Path, attempts: int) -> tuple[subprocess.Popen, str]:
    for attempt in range(1, attempts + 1):
        port = free_port()
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                cwd=log_path.parent,
                env=_server_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        endpoint = f"http://{HOST}:{port}"
        try:
            _wait_until_answering(process, endpoint)
            return process, endpoint
        except AssertionError as exc:
            _stop(process)
            # Another process may have taken the free port between our probe and the bind.
            log_tail = log_path.read_text(errors="replace")[-3000:]
            if attempt == attempts or "address already in use" not in log_tail.lower():
                raise AssertionError(f"{exc}\n--- moto server log ---\n{log_tail}") from None
    raise AssertionError("unreachable")


def _server_env() -> dict[str, str]:
    # Unbuffered, so the log shows why the server died; no AWS_* variables of the caller.
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _wait_until_answering(process: subprocess.Popen, endpoint: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the moto server exited with {process.returncode} before answering")
        try:
            _request(endpoint, "GET", "/moto-api/data.json")
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"the moto server did not answer within {STARTUP_TIMEOUT_S:.0f} s")


def _request(endpoint: str, method: str, path: str) -> None:
    # http.client, not urllib: a proxy configured in the environment must not see loopback calls.
    connection = http.client.HTTPConnection(endpoint.removeprefix("http://"), timeout=2)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        if response.status >= 500:
            raise OSError(f"{method} {path} answered {response.status}")
    finally:
        connection.close()


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT_S)


@dataclass
class S3Buckets:
    """The buckets of one test, laid out as in production: every area under its prefix in
    ``bucket`` (S3_BUCKET), except those in ``own_buckets`` (S3_BUCKET_<AREA>), at their root."""

    endpoint: str
    bucket: str
    own_buckets: dict[str, str]
    client: object  # a boto3 S3 client on the same server, to look behind the storages' back

    def location(self, area: str) -> tuple[str, str]:
        """(bucket, key prefix) of ``area``."""
        if area in self.own_buckets:
            return self.own_buckets[area], ""
        return self.bucket, f"{area}/"

    def object_key(self, area: str, name: str) -> tuple[str, str]:
        bucket, prefix = self.location(area)
        return bucket, prefix + name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        listing = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    def read(self, area: str, name: str) -> bytes:
        bucket, key = self.object_key(area, name)
        return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()


def s3_client(endpoint: str):
    return boto_session(**S3_CREDENTIALS).client("s3", endpoint_url=endpoint, region_name=REGION)


def boto_session(aws_access_key_id: str | None, aws_secret_access_key: str | None):
    """A boto3 session sharing one loader of boto's JSON service models with every other one:
    a fresh session parses them again, which costs 0.2-0.5 s for each storage area of each test."""
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    core.register_component("data_loader", _shared_model_loader())
    return boto3.Session(aws_access_key_id, aws_secret_access_key, botocore_session=core)


def storage_session(storage):
    """Stands in for S3Storage._create_session in tests: the same keys, the shared models."""
    return boto_session(storage.access_key, storage.secret_key)


@functools.cache
def _shared_model_loader():
    import botocore.loaders

    return botocore.loaders.create_loader()


def s3_environment(buckets: S3Buckets) -> dict[str, str]:
    """The S3_* variables a deployment on these buckets sets (see docs/configuration.md)."""
    return {
        "S3_BUCKET": buckets.bucket,
        **{f"S3_BUCKET_{area.upper()}": name for area, name in buckets.own_buckets.items()},
        "S3_ENDPOINT_URL": buckets.endpoint,
        "S3_REGION": REGION,
        "S3_ACCESS_KEY_ID": S3_CREDENTIALS["aws_access_key_id"],
        "S3_SECRET_ACCESS_KEY": S3_CREDENTIALS["aws_secret_access_key"],
    }
