"""Gunicorn settings of the web process: the image's command and `make bench` both start from here.

Sync workers, three by default (gunicorn's own `WEB_CONCURRENCY` changes it): a request spends part
of its time waiting on PostgreSQL and Redis, so one more worker than a two-core machine's cores
keeps the cores busy; on such a machine three served more requests per second than two or four.
"""

import os

bind = "0.0.0.0:8000"
workers = int(os.environ.get("WEB_CONCURRENCY") or 3)
timeout = 30
