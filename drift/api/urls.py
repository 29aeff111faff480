from django.urls import path

from drift.api import views

urlpatterns = [
    path("device/verdict-acks", views.VerdictAcksView.as_view(), name="device-verdict-acks"),
    path("device/drift-events", views.DriftEventsView.as_view(), name="device-drift-events"),
]
