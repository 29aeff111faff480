from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from sphere import files, ops
from sphere.dashboard import views as dashboard

admin.site.site_header = "Sphere"
admin.site.site_title = "Sphere"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="fleet", permanent=False)),
    path("fleet/", dashboard.fleet, name="fleet"),
    path("fleet/devices/<uuid:pk>/", dashboard.device, name="device"),
    path("drift/", include("drift.pages.urls")),
    path("labeling/", include("labeling.pages.urls")),
    path("registry/", include("registry.pages.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("devices.api.urls")),
    path("api/v1/", include("drift.api.urls")),
    path("api/v1/", include("labeling.device_api")),
    path("api/v1/", include("registry.urls_device")),
    path("api/v1/", include("labeling.api.urls")),
    path("api/v1/", include("registry.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.metrics_view, name="metrics"),
    path("files/<str:area>/<path:key>", files.stored_file, name="stored-file"),
]
