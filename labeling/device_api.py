"""The labeling app's device endpoint: feedback (true labels of the device's own predictions)."""

from __future__ import annotations

import orjson
from django.urls import path
from drf_spectacular.utils import OpenApiResponse, extend_schema

from devices.api.ingest import json_response
from devices.api.views import DeviceAPIView
from labeling import feedback


class FeedbackView(DeviceAPIView):
    """``POST /api/v1/device/feedback``: see labeling.feedback."""

    max_body_bytes = 256 * 1024

    @extend_schema(
        request={"application/json": {"type": "object"}},
        responses={
            200: OpenApiResponse(description='{"results": [{"id", "status": created|duplicate|rejected|not_found}]}'),
            400: None,
            413: None,
            415: None,
        },
    )
    def post(self, request):
        if request.content_type != "application/json":
            return json_response({"detail": "Content-Type must be application/json."}, status=415)
        try:
            results = feedback.ingest(request.auth, orjson.loads(request.body))
        except orjson.JSONDecodeError as exc:
            return json_response({"detail": f"Body is not valid JSON: {exc}"}, status=400)
        except feedback.FeedbackError as exc:
            return json_response({"detail": str(exc)}, status=400)
        return json_response({"results": results})


urlpatterns = [path("device/feedback", FeedbackView.as_view(), name="device-feedback")]
