from rest_framework.routers import SimpleRouter

from labeling.api import views

router = SimpleRouter()
router.register("snapshots", views.SnapshotViewSet, basename="datasetsnapshot")

urlpatterns = router.urls
