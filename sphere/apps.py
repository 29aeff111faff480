from django.apps import AppConfig


class SphereConfig(AppConfig):
    name = "sphere"
    verbose_name = "Sphere"

    def ready(self):
        from sphere import checks  # noqa: F401  (registers system checks)
