"""Shared test setup: personas, service requirements and helpers.

Personas (STYLE.md): an operator (staff, fleet permissions), an outsider (signed in, no staff
rights), device A and device B (each with its own token), and anonymous callers. Tests marked
``postgres`` or ``redis`` need those services; they are skipped on a developer machine without
them, and fail instead when SPHERE_REQUIRE_SERVICES=1 (CI), so a missing service can never
turn into a green run.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import pytest
from django.conf import settings

REQUIRE_SERVICES = os.environ.get("SPHERE_REQUIRE_SERVICES") == "1"


def pytest_runtest_setup(item):
    missing = []
    if item.get_closest_marker("postgres") and settings.USES_SQLITE:
        missing.append("PostgreSQL (run with DATABASE_URL=postgres://...)")
    if item.get_closest_marker("redis") and not settings.REDIS_URL:
        missing.append("Redis (run with REDIS_URL=redis://...)")
    if missing:
        message = "needs " + " and ".join(missing)
        if REQUIRE_SERVICES:
            pytest.fail(f"SPHERE_REQUIRE_SERVICES=1 but this run has no {message}", pytrace=False)
        pytest.skip(message)


@pytest.fixture(autouse=True, scope="session")
def _fast_password_hashing():
    """Personas sign in with passwords: PBKDF2's million rounds cost ~0.3 s a user, minutes over
    the suite. Tests hash with MD5 first (PBKDF2 still checks any hash made by the real setting);
    servers started as subprocesses keep the production hashers."""
    from django.contrib.auth import hashers

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", *settings.PASSWORD_HASHERS]
    hashers.get_hashers.cache_clear()
    hashers.get_hashers_by_algorithm.cache_clear()
    yield
    settings.PASSWORD_HASHERS = settings.PASSWORD_HASHERS[1:]
    hashers.get_hashers.cache_clear()
    hashers.get_hashers_by_algorithm.cache_clear()


@pytest.fixture(autouse=True)
def _eager_celery(settings):
    """Tasks run inline in tests unless a test starts a real worker (see tests/test_worker.py)."""
    from sphere.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.fixture(autouse=True)
def _fresh_media(settings, tmp_path):
    """Each test stores files under its own folder (one per storage area, as in production)."""
    settings.MEDIA_ROOT = tmp_path / "media"
    if not settings.S3_BUCKET:
        backend = "django.core.files.storage.FileSystemStorage"
        areas = {"default": None, **{area: area for area in settings.STORAGE_AREAS}}
        settings.STORAGES = {
            **settings.STORAGES,
            **{
                name: {
                    "BACKEND": backend,
                    "OPTIONS": {"location": str(tmp_path / "media" / (area or "")), "allow_overwrite": bool(area)},
                }
                for name, area in areas.items()
            },
        }


# The area given a bucket of its own in the S3 tests; the others are prefixes in S3_BUCKET.
S3_OWN_BUCKET_AREA = "prediction_images"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback, started once per run (tests/s3_server.py)."""
    from tests.s3_server import running_s3_server

    with running_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_storages(_fresh_media, s3_server, settings, monkeypatch):
    """Every storage area on fresh buckets of the S3 server, through the same settings code as
    production (S3_* variables → sphere.storage). Runs after _fresh_media, so its folders do
    not replace these storages."""
    from storages.backends.s3 import S3Storage

    from sphere.storage import storage_settings
    from tests.s3_server import S3Buckets, reset, s3_client, s3_environment, storage_session

    # Same keys as production; only boto's parsed service models are shared between tests.
    monkeypatch.setattr(S3Storage, "_create_session", storage_session)

    bucket = f"sphere-{uuid.uuid4().hex[:12]}"
    buckets = S3Buckets(
        endpoint=s3_server,
        bucket=bucket,
        own_buckets={S3_OWN_BUCKET_AREA: f"{bucket}-{S3_OWN_BUCKET_AREA.replace('_', '-')}"},
        client=s3_client(s3_server),
    )
    for name in (buckets.bucket, *buckets.own_buckets.values()):
        buckets.client.create_bucket(Bucket=name)
    with monkeypatch.context() as patch:
        _use_only(patch, s3_environment(buckets), settings.STORAGE_AREAS)
        areas = {"default": None, **{area: area for area in settings.STORAGE_AREAS}}
        on_s3 = {name: storage_settings(area, settings.MEDIA_ROOT) for name, area in areas.items()}
    settings.S3_BUCKET = buckets.bucket
    settings.STORAGES = {**settings.STORAGES, **on_s3}
    yield buckets
    reset(s3_server)


def _use_only(patch, environment: dict[str, str], areas) -> None:
    """Set ``environment`` and drop every other S3 variable the caller's shell may hold."""
    names = {"S3_PREFIX", "S3_SIGNED_URL_SECONDS", *environment, *(f"S3_BUCKET_{area.upper()}" for area in areas)}
    for name in names:
        patch.delenv(name, raising=False)
        patch.delenv(f"{name}_FILE", raising=False)
    for name, value in environment.items():
        patch.setenv(name, value)


@pytest.fixture(autouse=True)
def _no_mlflow_by_default(settings):
    """Training jobs mirror to MLflow; tests that check the mirror point it at their own store
    (registry/tests/test_tracking.py) — the rest must not write into the real data directory."""
    settings.MLFLOW_ENABLED = False


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle counters live in the cache; each test starts with none."""
    from django.core.cache import cache

    cache.clear()


@dataclass
class DevicePersona:
    device: object
    token: str

    @property
    def auth(self) -> dict:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.token}"}


def make_device(name: str, group=None) -> DevicePersona:
    from devices import services
    from devices.models import Device

    device = Device.objects.create(name=name, group=group)
    return DevicePersona(device=device, token=services.issue_credential(device))


@pytest.fixture
def device_a(db):
    return make_device("device-a")


@pytest.fixture
def device_b(db):
    return make_device("device-b")


@pytest.fixture
def operator(db, django_user_model):
    from django.contrib.auth.models import Group, Permission

    group, _ = Group.objects.get_or_create(name="Operators")
    group.permissions.set(Permission.objects.filter(content_type__app_label="devices"))
    user = django_user_model.objects.create_user("olivia", password="pw-olivia-123", is_staff=True)
    user.groups.add(group)
    return user


@pytest.fixture
def outsider(db, django_user_model):
    return django_user_model.objects.create_user("oscar", password="pw-oscar-123")


@pytest.fixture
def api():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def operator_api(operator):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(operator)
    return client


@pytest.fixture
def outsider_api(outsider):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_login(outsider)
    return client


def heartbeat_body(**overrides) -> dict:
    body = {
        "id": str(uuid.uuid4()),
        "cpu_percent": 23.5,
        "memory_percent": 41.0,
        "memory_used_mb": 210.0,
        "temperature_c": 52.3,
        "disk_percent": 12.0,
        "net_rx_bytes": 1024,
        "net_tx_bytes": 2048,
        "latency_p50_ms": 8.2,
        "latency_p95_ms": 14.9,
        "throughput_ips": 11.0,
        "uptime_s": 3600.0,
        "client_version": "0.1.0",
        "model_version": "digits-knn@1",
    }
    body.update(overrides)
    return body


# --- Packages ---------------------------------------------------------------------------------


@pytest.fixture
def send(api, django_capture_on_commit_callbacks):
    """``send(persona, archive)``: upload an archive as that device and run its processing (the
    eager task runs at commit); returns the Package row."""
    from devices.models import Package
    from devices.tests.packages import upload

    def send(persona, archive):
        with django_capture_on_commit_callbacks(execute=True):
            response = upload(api, persona, archive)
        assert response.status_code in (200, 201), response.content
        return Package.objects.get(device=persona.device, package_id=archive.package_id)

    return send


@pytest.fixture
def reprocess(django_capture_on_commit_callbacks):
    """``reprocess(package)``: run a package's handler again, as the admin action does."""
    from devices.ingest import processing
    from devices.models import Package

    def reprocess(package):
        with django_capture_on_commit_callbacks(execute=True):
            assert processing.reprocess(Package.objects.filter(pk=package.pk)) == 1
        package.refresh_from_db()
        return package

    return reprocess
