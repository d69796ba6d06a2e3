"""``points.expiring`` (SPEC §16): tell subscribers about points whose lots expire within
``POINTS_EXPIRY_NOTICE_DAYS``, once per lot. Run periodically by Celery beat and the embedded beat."""

from django.conf import settings
from django.db import transaction

from points.selectors import lots_expiring_soon

from .emitters import points_expiring_notify
from .models import Kind, WebhookSubscription

BATCH = 500


def points_expiring_announce() -> int:
    """Offer a ``points.expiring`` delivery for every lot expiring soon; lots already announced to a
    subscription are skipped by its dedupe key, so each run only adds the new ones. Returns how many lots
    were offered (0 without a subscription to the kind)."""
    if not any(Kind.POINTS_EXPIRING in s.kinds for s in WebhookSubscription.objects.filter(is_active=True)):
        return 0
    offered, batch = 0, []
    for lot in lots_expiring_soon(within_days=settings.POINTS_EXPIRY_NOTICE_DAYS).iterator(chunk_size=BATCH):
        batch.append(lot)
        if len(batch) == BATCH:
            offered += _offer(batch)
            batch = []
    return offered + (_offer(batch) if batch else 0)


def _offer(lots: list[dict]) -> int:
    with transaction.atomic():
        points_expiring_notify(lots=lots)
    return len(lots)
