"""Operators' access to stored files: ``GET /files/<area>/<key>``.

Nothing in storage is public. A signed-in, active staff user holding the view permission of an
area's records gets its files: streamed from the local folder, or on S3 redirected to a
short-lived signed URL, so the bytes never pass through the web process. ``?thumb=1`` answers a
small PNG of an image, made here from the stored bytes on both backends. Device tokens open
nothing here: this is a plain Django view that knows only sessions.
"""

from __future__ import annotations

import io
import mimetypes
import re
from pathlib import PurePosixPath

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import ImproperlyConfigured
from django.core.files.storage import FileSystemStorage, storages
from django.http import FileResponse, Http404, HttpResponse, HttpResponseForbidden, HttpResponseRedirect
from django.utils.cache import patch_cache_control
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_safe
from PIL import Image

from devices.ingest.archive import IMAGE_FORMATS

# The permissions that open an area (any one of them): viewing the records its files belong to,
# or labeling, whose tasks show prediction and drift images. An area missing here serves nothing.
AREA_PERMISSIONS = {
    "packages": ("devices.view_package",),
    "prediction_images": ("devices.view_predictionimage", "labeling.label_tasks"),
    "oplogs": ("devices.view_operationallog",),
    "drift_images": ("drift.view_driftsample", "labeling.label_tasks"),
    # Dataset snapshot archives (labeling.export) and model bundles (registry.versions): each
    # prefix has its own permission (KEY_PERMISSIONS); these hold for anything else stored there.
    "artifacts": ("labeling.view_datasetsnapshot",),
}
# Within an area, keys under a prefix need these instead of the area's permissions.
KEY_PERMISSIONS = {
    ("artifacts", "snapshots/"): ("labeling.view_datasetsnapshot",),
    ("artifacts", "models/"): ("registry.view_modelversion",),
}
# Only the raster formats ingestion accepts (archive.IMAGE_FORMATS) are shown in the browser;
# everything else (SVG and HTML included, which could run script) is a download.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
# Python's own table plus Sphere's suffixes, not the host's /etc/mime.types: the same key gets
# the same type on every machine (some hosts call ".package" application/vnd.autopackage).
_TYPES = mimetypes.MimeTypes()
_TYPES.add_type("application/gzip", ".package")
_TYPES.add_type("text/plain", ".log")
_TYPES.add_type("image/webp", ".webp")
THUMBNAIL_PX = 128
MAX_KEY_LENGTH = 1024  # S3's own limit
_UNSAFE_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\]")


@require_safe
def stored_file(request, area: str, key: str):
    permissions = AREA_PERMISSIONS.get(area)
    if permissions is None:
        raise Http404("No such storage area.")
    refusal = _refusal(request, permissions_for(area, key, permissions))
    if refusal is not None:
        return refusal
    if not is_safe_key(key):
        raise Http404("No such file.")
    storage = storages[area]
    if request.GET.get("thumb") == "1":
        return _thumbnail(storage, key)
    if isinstance(storage, FileSystemStorage):
        return _stream(storage, key)
    return _redirect_to_signed_url(storage, area, key)


def is_safe_key(key: str) -> bool:
    """A relative key of plain segments: nothing that could climb out of the area's folder."""
    if not key or len(key) > MAX_KEY_LENGTH or key.startswith("/") or _UNSAFE_CHARACTERS.search(key):
        return False
    return all(segment not in {"", ".", ".."} for segment in key.split("/"))


def permissions_for(area: str, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    for (prefixed_area, prefix), permissions in KEY_PERMISSIONS.items():
        if area == prefixed_area and key.startswith(prefix):
            return permissions
    return default


def _refusal(request, permissions: tuple[str, ...]) -> HttpResponse | None:
    user = request.user
    if not user.is_authenticated:
        # A browser navigating here is sent to sign in; scripts and <img> requests get a 403.
        if "text/html" in request.headers.get("Accept", ""):
            return redirect_to_login(request.get_full_path())
        return HttpResponseForbidden("Sign in with a staff account.", content_type="text/plain")
    if not (user.is_active and user.is_staff and any(user.has_perm(p) for p in permissions)):
        return HttpResponseForbidden("You may not see the files of this area.", content_type="text/plain")
    return None


def _stream(storage: FileSystemStorage, key: str) -> FileResponse:
    try:
        handle = storage.open(key, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise Http404("No such file.") from None
    content_type = content_type_of(key)
    response = FileResponse(
        handle,
        content_type=content_type,
        as_attachment=content_type not in INLINE_TYPES,
        filename=PurePosixPath(key).name,
    )
    return _private(response)


def _redirect_to_signed_url(storage, area: str, key: str) -> HttpResponseRedirect:
    if not getattr(storage, "querystring_auth", False):
        raise ImproperlyConfigured(f"Storage {area!r} hands out unsigned URLs; /files/ redirects to signed ones only.")
    if not storage.exists(key):
        raise Http404("No such file.")
    content_type = content_type_of(key)
    # The object store answers the signed URL with the same type and disposition as a local file.
    disposition = content_disposition_header(content_type not in INLINE_TYPES, PurePosixPath(key).name)
    url = storage.url(key, parameters={"ResponseContentType": content_type, "ResponseContentDisposition": disposition})
    response = HttpResponseRedirect(url)
    # The URL expires: neither the browser nor a proxy may keep the redirect.
    patch_cache_control(response, private=True, no_store=True)
    return response


def _thumbnail(storage, key: str) -> HttpResponse:
    if content_type_of(key) not in INLINE_TYPES:
        raise Http404("Only images have thumbnails.")
    try:
        with storage.open(key, "rb") as handle:
            png = thumbnail_png(handle, settings.PACKAGE_MAX_IMAGE_PIXELS)
    except FileNotFoundError:
        raise Http404("No such file.") from None
    except ThumbnailError as exc:
        raise Http404(str(exc)) from None
    response = HttpResponse(png, content_type="image/png")
    response["Content-Disposition"] = content_disposition_header(False, f"{PurePosixPath(key).stem}.thumb.png")
    return _private(response)


class ThumbnailError(Exception):
    """No thumbnail can be made of this file (not an image, or over the pixel limit)."""


def thumbnail_png(handle, max_pixels: int) -> bytes:
    """A PNG of at most THUMBNAIL_PX on each side. The declared size is checked before any
    pixel is decoded: a tiny file can declare gigapixels."""
    try:
        with Image.open(handle, formats=IMAGE_FORMATS) as image:
            if image.width * image.height > max_pixels:
                raise ThumbnailError(f"The image is {image.width}×{image.height} pixels, over {max_pixels}.")
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            small = image if image.mode in {"RGB", "RGBA", "L", "LA"} else image.convert("RGBA")
            output = io.BytesIO()
            small.save(output, "PNG")
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ThumbnailError(f"The image cannot be read: {exc}") from None
    return output.getvalue()


def content_type_of(key: str) -> str:
    return _TYPES.guess_type(key)[0] or "application/octet-stream"


def _private(response: HttpResponse) -> HttpResponse:
    response["X-Content-Type-Options"] = "nosniff"
    # Whatever the file holds, a browser opening it runs no script and reaches no origin.
    response["Content-Security-Policy"] = "sandbox"
    patch_cache_control(response, private=True)
    return response
