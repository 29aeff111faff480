from django.urls import path

from registry.pages import views

app_name = "registry"

urlpatterns = [
    path("", views.index, name="index"),
    path("versions/<int:pk>/", views.version_detail, name="version"),
    path("families/<slug:name>/aliases/", views.alias_history, name="aliases"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<int:pk>/", views.job_detail, name="job"),
    path("policies/<int:pk>/run/", views.run_policy, name="run-policy"),
    path("rollouts/", views.rollouts_list, name="rollouts"),
    path("rollouts/<int:pk>/", views.rollout_detail, name="rollout"),
    path("rollouts/<int:pk>/act/", views.act_on_rollout, name="rollout-act"),
]
