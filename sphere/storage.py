"""Where each storage area keeps its files, read from the environment.

``settings.STORAGES`` is built here, so the rule for one area (a folder under MEDIA_ROOT; with
S3_BUCKET, a prefix in that bucket or a bucket of its own) is a plain function that tests can
call with any environment. Imported by the settings module: nothing here may read settings.
"""

from __future__ import annotations

from pathlib import Path

from sphere.env import env_int, env_str

FILESYSTEM_BACKEND = "django.core.files.storage.FileSystemStorage"
S3_BACKEND = "storages.backends.s3.S3Storage"


def storage_settings(area: str | None, media_root: Path) -> dict:
    """The STORAGES entry of ``area`` (``None`` for Django's default storage)."""
    if not env_str("S3_BUCKET"):
        location = media_root / area if area else media_root
        # Names derive from device and record ids: writing one again replaces the same bytes
        # (without allow_overwrite, Django would save a renamed copy beside it).
        return {"BACKEND": FILESYSTEM_BACKEND, "OPTIONS": {"location": str(location), "allow_overwrite": bool(area)}}
    return {"BACKEND": S3_BACKEND, "OPTIONS": {**s3_location(area), **_s3_connection()}}


def own_bucket_variable(area: str) -> str:
    return f"S3_BUCKET_{area.upper()}"


def s3_location(area: str | None) -> dict:
    """Bucket and key prefix: an area with its own bucket keeps its files at that bucket's root
    (under S3_PREFIX); the others share S3_BUCKET, each under ``<S3_PREFIX><area>/``."""
    prefix = env_str("S3_PREFIX", "")
    own_bucket = env_str(own_bucket_variable(area)) if area else None
    if own_bucket or not area:
        return {"bucket_name": own_bucket or env_str("S3_BUCKET"), "location": prefix}
    return {"bucket_name": env_str("S3_BUCKET"), "location": f"{prefix}{area}/"}


def _s3_connection() -> dict:
    return {
        "endpoint_url": env_str("S3_ENDPOINT_URL"),
        "region_name": env_str("S3_REGION"),
        "access_key": env_str("S3_ACCESS_KEY_ID"),
        "secret_key": env_str("S3_SECRET_ACCESS_KEY"),
        # Objects are private (no ACL is sent, so the bucket owner alone may read them) and
        # every URL the storage hands out is signed and short-lived.
        "default_acl": None,
        "querystring_auth": True,
        "querystring_expire": env_int("S3_SIGNED_URL_SECONDS", 300, minimum=10),
        # Package and image names are derived from device and record ids: writing the same
        # name again is a replay of the same bytes, so overwrite rather than rename.
        "file_overwrite": True,
    }
