from rest_framework.routers import SimpleRouter

from labeling.api import views

router = SimpleRouter()
router.register("snapshots", views.SnapshotViewSet, basename="datasetsnapshot")
router.register("snapshot-requests", views.SnapshotRequestViewSet, basename="snapshotrequest")

urlpatterns = router.urls
