from django.urls import path
from rest_framework.routers import SimpleRouter

from devices.api import ingest, views

router = SimpleRouter()
router.register("devices", views.DeviceViewSet, basename="device")
router.register("groups", views.DeviceGroupViewSet, basename="devicegroup")
router.register("telemetry", views.TelemetryViewSet, basename="telemetry")
router.register("enrollment-tokens", views.EnrollmentTokenViewSet, basename="enrollmenttoken")
router.register("predictions", ingest.PredictionLogViewSet, basename="predictionlog")
router.register("packages", ingest.PackageViewSet, basename="package")

urlpatterns = [
    path("enroll", views.EnrollView.as_view(), name="device-enroll"),
    path("device/heartbeat", views.HeartbeatView.as_view(), name="device-heartbeat"),
    path("device/desired-state", views.DesiredStateView.as_view(), name="device-desired-state"),
    path("device/predictions", ingest.PredictionsView.as_view(), name="device-predictions"),
    path("device/packages", ingest.PackagesView.as_view(), name="device-packages"),
    *router.urls,
]
