from django.apps import AppConfig


class ConnectConfig(AppConfig):
    name = "connect"
    verbose_name = "Connect"

    def ready(self):
        from config.metrics import scrape_time_collector_register

        from .metrics import RewardActionCollector

        scrape_time_collector_register(RewardActionCollector())

        # Celery's autodiscovery imports ``connect.tasks`` only; the webhook task lives in its package.
        from .webhooks import tasks  # noqa: F401
