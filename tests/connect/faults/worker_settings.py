"""Settings of the Celery worker processes the fault tests start: the test settings with a real broker.

``config.settings_test`` runs every task inline; a worker must instead publish its delayed retries to
the broker, as in production.
"""

import os

from config.settings_test import *  # noqa: F403

CELERY_BROKER_URL = os.environ["TEST_CELERY_BROKER_URL"]
CELERY_TASK_ALWAYS_EAGER = False
LOGGING["root"]["level"] = os.environ.get("TEST_WORKER_LOG_LEVEL", "WARNING")  # noqa: F405
