import os

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("rewards")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def _database_connections_check(sender=None, **kwargs):
    """With CELERY_DB_REUSE_MAX a worker keeps its connection between tasks: drop it when it broke
    (a database restart) or passed DB_CONN_MAX_AGE, as Django does around each web request."""
    if sender is not None and getattr(sender.request, "is_eager", False):
        return  # an inline task runs inside its caller's request or transaction
    from django.db import close_old_connections

    close_old_connections()
