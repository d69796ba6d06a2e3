"""``points.expiring`` (SPEC §16): tell subscribers about points whose lots expire within
``POINTS_EXPIRY_NOTICE_DAYS``, once per lot. Run periodically by Celery beat and the embedded beat."""

from django.conf import settings
from django.db import transaction
from django.db.models import Count

from points.selectors import lots_expiring_soon

from .emitters import points_expiring_notify
from .models import Kind, WebhookDelivery, WebhookSubscription

BATCH = 500


def points_expiring_announce() -> int:
    """Offer a ``points.expiring`` delivery for every lot expiring soon that some active subscription has
    not been told about; the dedupe key ``lot:<id>`` makes a repeat (or a parallel run) a no-op. Returns
    how many lots were offered (0 without a subscription to the kind)."""
    subscribed = sum(Kind.POINTS_EXPIRING in s.kinds for s in WebhookSubscription.objects.filter(is_active=True))
    if not subscribed:
        return 0
    offered, batch = 0, []
    for lot in lots_expiring_soon(within_days=settings.POINTS_EXPIRY_NOTICE_DAYS).iterator(chunk_size=BATCH):
        batch.append(lot)
        if len(batch) == BATCH:
            offered += _offer(batch, subscribed)
            batch = []
    return offered + (_offer(batch, subscribed) if batch else 0)


def _offer(lots: list[dict], subscribed: int) -> int:
    """Offer the lots not yet announced to every subscription (read first, so a run over lots already
    announced writes nothing)."""
    keys = {f"lot:{lot['pk']}": lot for lot in lots}
    told = set(
        WebhookDelivery.objects.filter(kind=Kind.POINTS_EXPIRING, dedupe_key__in=keys)
        .values("dedupe_key")
        .annotate(subscriptions=Count("subscription", distinct=True))
        .filter(subscriptions__gte=subscribed)
        .values_list("dedupe_key", flat=True)
    )
    fresh = [lot for key, lot in keys.items() if key not in told]
    if fresh:
        with transaction.atomic():
            points_expiring_notify(lots=fresh)
    return len(fresh)
