from django.urls import path
from rest_framework.routers import SimpleRouter

from registry.api import views

router = SimpleRouter()
router.register("registry/families", views.FamilyViewSet, basename="modelfamily")
router.register("registry/versions", views.VersionViewSet, basename="modelversion")
router.register("registry/policies", views.PolicyViewSet, basename="retrainingpolicy")
router.register("registry/jobs", views.JobViewSet, basename="trainingjob")
router.register("registry/rollouts", views.RolloutViewSet, basename="rollout")

urlpatterns = [
    path("models/<slug:family>/predict", views.PredictView.as_view(), name="model-predict"),
    *router.urls,
]
