from django.urls import path

from labeling.pages import views

app_name = "labeling"

urlpatterns = [
    path("", views.next_task, name="next"),
    path("tasks/<int:pk>/label/", views.label, name="label"),
    path("tasks/<int:pk>/skip/", views.skip, name="skip"),
    path("tasks/<int:pk>/touch/", views.touch, name="touch"),
    path("skipped/clear/", views.unskip, name="unskip"),
    path("undo/", views.undo, name="undo"),
    path("counts/", views.counts, name="counts"),
    path("review/", views.review_queue, name="review"),
    path("review/<int:pk>/", views.review, name="decide"),
    path("lead/", views.lead, name="lead"),
]
