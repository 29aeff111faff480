from django.apps import AppConfig


class RegistryConfig(AppConfig):
    """Model versions, retraining and rollouts (issue: registry, retraining and rollout)."""

    name = "registry"
