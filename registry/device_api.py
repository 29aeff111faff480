"""The registry's device endpoint: ``GET /api/v1/device/bundles/<version id>``.

A device gets only the bundle its desired state names — its assignment, or the baseline
during a rollback (registry.rollouts.downloadable); any other id is a 404, so ids reveal
nothing. On local storage the file is streamed; on S3 the answer redirects to a short-lived
signed URL, so the bytes never pass through the web process (the edge client sends its token
only to the server's own origin, never to the storage host).
"""

from __future__ import annotations

from django.core.files.storage import FileSystemStorage, storages
from django.http import FileResponse, Http404, HttpResponseRedirect
from django.utils.cache import patch_cache_control
from django.utils.http import content_disposition_header
from drf_spectacular.utils import OpenApiResponse, extend_schema

from devices.api.views import DeviceAPIView
from registry import rollouts
from registry.models import ModelVersion
from registry.versions import ARTIFACTS

BUNDLE_TYPE = "application/gzip"


class BundleView(DeviceAPIView):
    """The bundle of the model version this device's desired state names (404 for any other)."""

    @extend_schema(
        responses={
            (200, BUNDLE_TYPE): OpenApiResponse(description="The bundle (tar.gz); check size and sha256."),
            302: OpenApiResponse(description="On S3: a short-lived signed URL of the bundle."),
            401: None,
            404: OpenApiResponse(description="Not a version this device is assigned."),
        }
    )
    def get(self, request, version_id: int):
        version = rollouts.downloadable(request.auth, version_id)
        if version is None:
            raise Http404("No bundle of that id is assigned to this device.")
        return bundle_response(version)


def bundle_response(version: ModelVersion):
    storage = storages[ARTIFACTS]
    filename = f"{version.label.replace('@', '-')}.tar.gz"
    if isinstance(storage, FileSystemStorage):
        try:
            handle = storage.open(version.bundle_key, "rb")
        except FileNotFoundError:
            raise Http404("The bundle file is missing.") from None
        response = FileResponse(handle, content_type=BUNDLE_TYPE, as_attachment=True, filename=filename)
        response["ETag"] = f'"{version.bundle_sha256}"'
        patch_cache_control(response, private=True)
        return response
    disposition = content_disposition_header(True, filename)
    url = storage.url(
        version.bundle_key, parameters={"ResponseContentType": BUNDLE_TYPE, "ResponseContentDisposition": disposition}
    )
    response = HttpResponseRedirect(url)
    # The URL expires: nobody may keep the redirect.
    patch_cache_control(response, private=True, no_store=True)
    return response
