"""Connect's scrape-time metric: rewards_reward_actions{status, channel}, the outbox counted at scrape."""

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily

from .models import RewardAction


class RewardActionCollector:
    def collect(self):
        family = GaugeMetricFamily(
            "rewards_reward_actions", "Reward actions by status and channel.", labels=["status", "channel"]
        )
        rows = RewardAction.objects.values("status", "reward_type").annotate(n=Count("pk")).order_by()
        for row in rows:
            family.add_metric([row["status"], row["reward_type"]], row["n"])
        yield family
