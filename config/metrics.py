"""Prometheus metrics of the platform (exposed at /metrics, with django-prometheus' request metrics).

Counters and histograms are updated where the work happens; the state of the reward-action
outbox is read from the database at scrape time, so it is right whatever process did the work.
With several gunicorn workers set PROMETHEUS_MULTIPROC_DIR so their counters are aggregated.
"""

import os

import prometheus_client
from prometheus_client import Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily

EVENTS_INGESTED = Counter(
    "rewards_events_ingested_total",
    "Events stored by the inbox, by type and outcome (types no rule matched are labelled 'unmatched').",
    ["event_type", "status"],
)
LEDGER_OPERATIONS = Counter(
    "rewards_ledger_operations_total",
    "Ledger operations by kind and outcome: performed, replayed, or refused with its error code.",
    ["kind", "outcome"],
)
DISPATCH_SECONDS = Histogram(
    "rewards_dispatch_seconds",
    "Time of one dispatch attempt of a reward action, by channel and outcome.",
    ["channel", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class RewardActionCollector:
    """rewards_reward_actions{status, channel}: the outbox counted by status and channel at scrape."""

    def collect(self):
        from django.db.models import Count

        from connect.models import RewardAction

        family = GaugeMetricFamily(
            "rewards_reward_actions", "Reward actions by status and channel.", labels=["status", "channel"]
        )
        rows = RewardAction.objects.values("status", "reward_type").annotate(n=Count("pk")).order_by()
        for row in rows:
            family.add_metric([row["status"], row["reward_type"]], row["n"])
        yield family


_ACTION_COLLECTOR = RewardActionCollector()


def render_latest() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = prometheus_client.REGISTRY
    output = prometheus_client.generate_latest(registry)
    scrape_time = prometheus_client.CollectorRegistry()
    scrape_time.register(_ACTION_COLLECTOR)
    return output + prometheus_client.generate_latest(scrape_time)
