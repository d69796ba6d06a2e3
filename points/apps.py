from django.apps import AppConfig


class PointsConfig(AppConfig):
    name = "points"
    verbose_name = "Points ledger"

    def ready(self):
        from . import roles, services  # noqa: F401  (register the roles and system-account post_migrate hooks)
