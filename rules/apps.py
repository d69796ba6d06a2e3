from django.apps import AppConfig


class RulesConfig(AppConfig):
    name = "rules"
    verbose_name = "Reward rules"

    def ready(self):
        from . import selectors  # noqa: F401  (connect the signals that clear the rules cache)
