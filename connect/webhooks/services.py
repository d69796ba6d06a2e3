"""Webhook writes: subscriptions, the delivery outbox, and the sending of what is due.

The outbox follows the reward actions' pattern: a delivery row is written in the transaction of what
it reports (``webhook_deliveries_enqueue``), one doorbell task is rung after that commit, and a run
claims up to ``WEBHOOK_BATCH_SIZE`` due rows with ``FOR UPDATE SKIP LOCKED``, sends them (at most
``WEBHOOK_CONCURRENCY`` at a time), and records each outcome with a row in the delivery log. A claim is
a lease: a run that died is taken over when it ends. Celery beat runs the same drain every
``WEBHOOK_SWEEP_INTERVAL_SECONDS``, so a lost doorbell or a due retry is never left behind.
"""

from __future__ import annotations

import json
import logging
import random
import secrets as secrets_module
import time
from collections.abc import Iterable, Sized
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import requests
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from config.api.jsonbody import storable_text

from .addresses import webhook_url_problem
from .models import Kind, WebhookAttempt, WebhookDelivery, WebhookSubscription
from .signing import DELIVERY_HEADER, SIGNATURE_HEADER, signature_header

logger = logging.getLogger("connect.webhooks")

Status = WebhookDelivery.Status
MAX_ERROR_CHARS = 2000
MAX_EXCERPT_CHARS = 1000
USER_AGENT = "rewards-webhooks/1"


class WebhookOutsideTransaction(RuntimeError):
    """A delivery must be written in the transaction of what it reports."""


# --- subscriptions -----------------------------------------------------------------------------------


def webhook_kinds_clean(kinds) -> list[str]:
    kinds = list(dict.fromkeys(kinds or []))
    unknown = [kind for kind in kinds if kind not in Kind.values]
    if unknown or not kinds:
        raise ValidationError(
            {
                "kinds": f"Choose one or more of {', '.join(Kind.values)}"
                + (f"; unknown: {', '.join(unknown)}" if unknown else ".")
            }
        )
    return kinds


def webhook_url_clean(url: str) -> str:
    problem = webhook_url_problem(url)
    if problem:
        raise ValidationError({"url": problem})
    return url


def webhook_secret_new() -> str:
    return "whsec_" + secrets_module.token_urlsafe(32)


@transaction.atomic
def webhook_subscription_create(
    *, url: str, kinds: list[str], secret: str | None = None, description: str = ""
) -> WebhookSubscription:
    """A new active subscription; ``ValidationError`` for a refused URL, unknown kinds or a short secret."""
    secret = secret or webhook_secret_new()
    if len(secret) < 16:
        raise ValidationError({"secret": "At least 16 characters."})
    subscription = WebhookSubscription(
        url=webhook_url_clean(url), kinds=webhook_kinds_clean(kinds), secret=secret, description=description
    )
    subscription.full_clean(exclude=["url"])  # the URL was checked above, with the stricter rules
    subscription.save()
    return subscription


@transaction.atomic
def webhook_secret_rotate(
    *, subscription_id, new_secret: str | None = None, grace_seconds: int | None = None
) -> tuple[WebhookSubscription, str]:
    """Make ``new_secret`` (or a generated one) the signing secret; the old one keeps signing as a
    second ``v1`` for ``grace_seconds`` (default ``WEBHOOK_SECRET_GRACE_SECONDS``). Returns the secret."""
    subscription = WebhookSubscription.objects.select_for_update().get(pk=subscription_id)
    new_secret = new_secret or webhook_secret_new()
    if len(new_secret) < 16:
        raise ValidationError({"secret": "At least 16 characters."})
    grace = settings.WEBHOOK_SECRET_GRACE_SECONDS if grace_seconds is None else grace_seconds
    now = timezone.now()
    subscription.previous_secret = subscription.secret
    subscription.previous_secret_expires_at = now + timedelta(seconds=max(0, grace))
    subscription.secret = new_secret
    subscription.updated_at = now
    subscription.save(update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"])
    return subscription, new_secret


# --- the outbox --------------------------------------------------------------------------------------


def webhook_deliveries_enqueue(*, kind: str, payload: dict, dedupe_key: str | None = None) -> int:
    """Write one delivery of ``payload`` per active subscription to ``kind``; the doorbell rings on commit.

    Must be called inside the transaction of what it reports (raises ``WebhookOutsideTransaction``
    otherwise), so a rolled-back change sends nothing and a committed one is never missed. With a
    ``dedupe_key``, a subscription gets at most one delivery of that kind and key, ever (a repeat is
    skipped by the unique constraint). Returns how many deliveries were offered to the insert.
    """
    return webhook_deliveries_enqueue_many(kind=kind, payloads=[(payload, dedupe_key)])


def webhook_deliveries_enqueue_many(*, kind: str, payloads: Iterable[tuple[dict, str | None]]) -> int:
    """``webhook_deliveries_enqueue`` for several ``(payload, dedupe_key)`` of one kind: one query for
    the subscriptions, one insert, one doorbell. ``payloads`` may be a generator: it is consumed only
    when some active subscription wants ``kind``, so a caller need not build payloads nobody receives."""
    if kind not in Kind.values:
        raise ValueError(f"unknown webhook kind {kind!r}")
    if not connection.in_atomic_block:
        raise WebhookOutsideTransaction("webhook_deliveries_enqueue must run inside the transaction it reports")
    if isinstance(payloads, Sized) and not len(payloads):
        return 0
    subscriptions = [
        s for s in WebhookSubscription.objects.filter(is_active=True).only("id", "kinds") if kind in s.kinds
    ]
    if not subscriptions:
        return 0
    payloads = list(payloads)
    if not payloads:
        return 0
    now = timezone.now()
    rows = [
        WebhookDelivery(
            subscription_id=subscription.pk,
            kind=kind,
            payload=json.loads(json.dumps(payload, cls=DjangoJSONEncoder)),
            dedupe_key=dedupe_key,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        for payload, dedupe_key in payloads
        for subscription in subscriptions
    ]
    written = WebhookDelivery.objects.bulk_create(rows, ignore_conflicts=any(key for _, key in payloads))
    transaction.on_commit(webhooks_doorbell, robust=True)
    return len(written)


def webhooks_doorbell() -> None:
    """Ask a worker to drain due deliveries; if the broker is down, beat's sweep does it later.
    Retries are not scheduled one by one: the sweep sends them when they are due."""
    from .tasks import webhooks_deliver_due

    try:
        webhooks_deliver_due.delay()
    except Exception:
        logger.warning("could not ring the webhook doorbell; left to the sweep", exc_info=True)


@transaction.atomic
def webhook_delivery_replay(*, delivery_id) -> WebhookDelivery:
    """Send the delivery again (same id and payload), with a fresh retry budget; rings the doorbell."""
    delivery = WebhookDelivery.objects.select_for_update().get(pk=delivery_id)
    now = timezone.now()
    delivery.status, delivery.attempts, delivery.next_attempt_at = Status.PENDING, 0, now
    delivery.lease_until, delivery.updated_at = None, now
    delivery.save(update_fields=["status", "attempts", "next_attempt_at", "lease_until", "updated_at"])
    transaction.on_commit(webhooks_doorbell, robust=True)
    return delivery


# --- sending -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendOutcome:
    delivered: bool
    permanent: bool = False
    status_code: int | None = None
    error: str = ""
    excerpt: str = ""


def delivery_body(delivery: WebhookDelivery) -> bytes:
    """What is POSTed: the envelope with the payload under ``data``."""
    envelope = {
        "id": str(delivery.pk),
        "kind": delivery.kind,
        "created_at": delivery.created_at.isoformat().replace("+00:00", "Z"),
        "data": delivery.payload,
    }
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()


def webhook_retry_delay(attempt: int) -> float:
    """Seconds before the next try after the ``attempt``-th failure: doubling from
    ``WEBHOOK_RETRY_BASE_SECONDS`` up to ``WEBHOOK_RETRY_MAX_SECONDS``, half of it random."""
    step = min(settings.WEBHOOK_RETRY_MAX_SECONDS, settings.WEBHOOK_RETRY_BASE_SECONDS * 2.0 ** min(attempt - 1, 30))
    return step / 2 + random.uniform(0, step / 2)


def _send(delivery: WebhookDelivery, url_problem: str | None) -> SendOutcome:
    subscription = delivery.subscription
    if not subscription.is_active:
        return SendOutcome(delivered=False, permanent=True, error="The subscription is inactive.")
    problem = url_problem
    if problem:
        return SendOutcome(delivered=False, permanent=True, error=f"Refused URL: {problem}")
    body = delivery_body(delivery)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        DELIVERY_HEADER: str(delivery.pk),
        SIGNATURE_HEADER: signature_header(
            secrets=subscription.signing_secrets(), timestamp=int(time.time()), body=body
        ),
    }
    try:
        response = requests.post(
            subscription.url,
            data=body,
            headers=headers,
            timeout=(settings.WEBHOOK_CONNECT_TIMEOUT_SECONDS, settings.WEBHOOK_READ_TIMEOUT_SECONDS),
            allow_redirects=False,
            stream=True,
        )
    except requests.RequestException as exc:
        return SendOutcome(delivered=False, error=storable_text(f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]))
    try:
        # The receiver's text is kept as it came, less what the database cannot store (NUL).
        excerpt = storable_text(response.raw.read(MAX_EXCERPT_CHARS, decode_content=True).decode("utf-8", "replace"))
    except Exception:  # the status is what counts; a body that cannot be read is not kept
        excerpt = ""
    finally:
        response.close()
    if 200 <= response.status_code < 300:
        return SendOutcome(delivered=True, status_code=response.status_code, excerpt=excerpt)
    error = f"HTTP {response.status_code}" + (" (redirects are not followed)" if response.is_redirect else "")
    return SendOutcome(delivered=False, status_code=response.status_code, error=error, excerpt=excerpt)


def _claim(limit: int) -> list[WebhookDelivery]:
    now = timezone.now()
    due = Q(status=Status.PENDING, next_attempt_at__lte=now) | Q(status=Status.SENDING, lease_until__lte=now)
    with transaction.atomic():
        ids = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(due)
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        if not ids:
            return []
        lease = now + timedelta(seconds=settings.WEBHOOK_LEASE_SECONDS)
        WebhookDelivery.objects.filter(pk__in=ids).update(
            status=Status.SENDING, attempts=F("attempts") + 1, lease_until=lease, updated_at=now
        )
    return list(WebhookDelivery.objects.select_related("subscription").filter(pk__in=ids))


def _record(delivery: WebhookDelivery, outcome: SendOutcome, started_at, seconds: float) -> str:
    now = timezone.now()
    if outcome.delivered:
        result, fields = WebhookAttempt.Outcome.DELIVERED, {"status": Status.DELIVERED, "delivered_at": now}
    elif outcome.permanent or delivery.attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        result, fields = WebhookAttempt.Outcome.FAILED, {"status": Status.FAILED}
    else:
        retry_at = now + timedelta(seconds=webhook_retry_delay(delivery.attempts))
        result, fields = WebhookAttempt.Outcome.RETRY, {"status": Status.PENDING, "next_attempt_at": retry_at}
    with transaction.atomic():
        # Guarded on this run's claim: a run whose lease was taken over records nothing.
        updated = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=Status.SENDING, attempts=delivery.attempts
        ).update(
            **fields,
            lease_until=None,
            last_error=outcome.error,
            last_status_code=outcome.status_code,
            updated_at=now,
        )
        WebhookAttempt.objects.create(
            delivery=delivery,
            started_at=started_at,
            duration_ms=int(seconds * 1000),
            status_code=outcome.status_code,
            error=outcome.error,
            response_excerpt=outcome.excerpt,
            outcome=result,
        )
    if not updated:
        logger.warning("webhook delivery outcome not recorded: claimed again", extra={"delivery_id": str(delivery.pk)})
    elif result == WebhookAttempt.Outcome.FAILED:
        logger.warning(
            "webhook delivery failed for good; replay it from admin",
            extra={"delivery_id": str(delivery.pk), "kind": delivery.kind, "error": outcome.error},
        )
    return result


def _send_timed(delivery: WebhookDelivery, url_problem: str | None):
    started_at, started = timezone.now(), time.perf_counter()
    try:
        outcome = _send(delivery, url_problem)
    except Exception as exc:  # a fault of this delivery must not hold back the others of the batch
        logger.exception("webhook delivery raised", extra={"delivery_id": str(delivery.pk)})
        outcome = SendOutcome(delivered=False, error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
    return delivery, outcome, started_at, time.perf_counter() - started


def webhook_deliveries_send_due(*, limit: int | None = None) -> dict[str, int]:
    """Claim up to ``limit`` due deliveries, send them, record each outcome. Not inside a transaction:
    the HTTP calls happen between the claim's commit and the record's."""
    claimed = _claim(limit or settings.WEBHOOK_BATCH_SIZE)
    counts = {"claimed": len(claimed), "delivered": 0, "retry": 0, "failed": 0}
    if not claimed:
        return counts
    # Checked again before sending (a host name may now resolve elsewhere), once per subscription.
    urls = {delivery.subscription.url for delivery in claimed}
    problems = {url: webhook_url_problem(url) for url in urls}
    workers = max(1, min(settings.WEBHOOK_CONCURRENCY, len(claimed)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook") as pool:
        sent = list(pool.map(_send_timed, claimed, [problems[d.subscription.url] for d in claimed]))
    for delivery, outcome, started_at, seconds in sent:
        counts[_record(delivery, outcome, started_at, seconds)] += 1
    return counts


def webhook_deliveries_drain(*, max_seconds: float = 50.0) -> dict[str, int]:
    """Send due deliveries batch after batch until none is due or ``max_seconds`` have passed."""
    totals = {"claimed": 0, "delivered": 0, "retry": 0, "failed": 0}
    deadline = time.monotonic() + max_seconds
    while True:
        counts = webhook_deliveries_send_due()
        for key, value in counts.items():
            totals[key] += value
        if counts["claimed"] < settings.WEBHOOK_BATCH_SIZE or time.monotonic() > deadline:
            return totals
