from django.apps import AppConfig


class SphereConfig(AppConfig):
    name = "sphere"
    verbose_name = "Sphere"

    def ready(self):
        from sphere import checks, schema  # noqa: F401  (register system checks and OpenAPI extensions)
