"""The registry's device endpoints, included under /api/v1/ by sphere/urls.py."""

from django.urls import path

from registry import device_api

urlpatterns = [
    path("device/bundles/<int:version_id>", device_api.BundleView.as_view(), name="device-bundle"),
]
