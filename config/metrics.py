"""Prometheus metrics of the platform (exposed at /metrics, with django-prometheus' request metrics).

Counters and histograms are updated where the work happens; state such as the reward-action outbox
is read from the database at scrape time by collectors the apps register.
With several gunicorn workers set PROMETHEUS_MULTIPROC_DIR so their counters are aggregated.
"""

import os

import prometheus_client
from prometheus_client import Counter, Histogram, multiprocess

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


# Collectors that read the database at scrape time, so they are right whatever process did the work;
# the apps register theirs (config imports no app).
_scrape_time_collectors: list = []


def scrape_time_collector_register(collector) -> None:
    if collector not in _scrape_time_collectors:
        _scrape_time_collectors.append(collector)


def render_latest() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = prometheus_client.REGISTRY
    output = prometheus_client.generate_latest(registry)
    scrape_time = prometheus_client.CollectorRegistry()
    for collector in _scrape_time_collectors:
        scrape_time.register(collector)
    return output + prometheus_client.generate_latest(scrape_time)
