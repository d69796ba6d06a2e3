from celery import shared_task

from .services import holds_expire_due


@shared_task(acks_late=True, ignore_result=True)
def expire_holds() -> int:
    return holds_expire_due()
