from django.urls import path

from drift.pages import views

app_name = "drift"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("events/<int:pk>/", views.event_detail, name="event"),
    path("events/<int:pk>/verdict/", views.decide_event, name="decide"),
    path("incidents/<int:pk>/", views.incident_detail, name="incident"),
    path("reports/<int:pk>/", views.report_detail, name="report"),
    path("alerts/", views.alerts, name="alerts"),
    path("alerts/<int:pk>/", views.change_alert, name="change-alert"),
]
