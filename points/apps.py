from django.apps import AppConfig


class PointsConfig(AppConfig):
    name = "points"
    verbose_name = "Points ledger"

    def ready(self):
        from . import services  # noqa: F401  (registers the system-account post_migrate hook)
