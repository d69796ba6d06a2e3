from celery import shared_task

from .expiry import lots_expire_due
from .services import holds_expire_due


@shared_task(acks_late=True, ignore_result=True)
def expire_holds() -> int:
    return holds_expire_due()


@shared_task(acks_late=True, ignore_result=True)
def expire_points() -> int:
    """Expire due lots; one that fails is logged and skipped (see ``lots_expire_due``)."""
    return lots_expire_due().expired_lots
