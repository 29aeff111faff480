from django.apps import AppConfig


class LabelingConfig(AppConfig):
    """Labeling queue, labels, reviews and dataset snapshots (issue: labeling)."""

    name = "labeling"
