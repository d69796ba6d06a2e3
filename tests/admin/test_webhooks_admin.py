"""Webhook subscriptions and deliveries in admin: superusers only (SPEC §11); create, rotate, replay."""

import pytest
from django.contrib.messages import get_messages
from django.db import transaction
from django.urls import reverse

from connect.models import WebhookDelivery, WebhookSubscription
from connect.webhooks.services import webhook_deliveries_enqueue, webhook_subscription_create

from .conftest import ROLES

SECRET = "admin-secret-0123456789"


@pytest.fixture
def hook(db, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    subscription = webhook_subscription_create(url="http://127.0.0.1:9/hook", kinds=["event.failed"], secret=SECRET)
    with transaction.atomic():
        webhook_deliveries_enqueue(kind="event.failed", payload={"id": "e"})
    return subscription


@pytest.mark.parametrize("role", ROLES)
def test_only_superusers_reach_webhook_pages(role, hook, login):
    client = login(role)
    delivery = WebhookDelivery.objects.get()
    urls = [
        reverse("admin:connect_webhooksubscription_changelist"),
        reverse("admin:connect_webhooksubscription_add"),
        reverse("admin:connect_webhooksubscription_change", args=[hook.pk]),
        reverse("admin:connect_webhookdelivery_changelist"),
        reverse("admin:connect_webhookdelivery_change", args=[delivery.pk]),
    ]
    urls.append(reverse("admin:connect_webhookdelivery_changelist") + f"?subscription__id__exact={hook.pk}")
    expected = 200 if role == "superuser" else 403
    assert [client.get(url).status_code for url in urls] == [expected] * len(urls)
    if role == "superuser":
        change = client.get(reverse("admin:connect_webhooksubscription_change", args=[hook.pk])).content.decode()
        assert f"?subscription__id__exact={hook.pk}" in change and SECRET not in change
        filtered = client.get(urls[-1]).content.decode()
        assert reverse("admin:connect_webhookdelivery_change", args=[delivery.pk]) in filtered
    index = client.get(reverse("admin:index")).content.decode()
    assert ("Webhook subscriptions" in index) == (role == "superuser")


def test_the_add_form_refuses_a_private_url_and_creates_with_a_generated_secret(login, settings):
    client = login("superuser")
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    url = reverse("admin:connect_webhooksubscription_add")
    form = {"url": "http://169.254.169.254/latest", "kinds": ["event.failed"], "secret": "", "is_active": "on"}
    response = client.post(url, form)
    assert response.status_code == 200 and "non-public address" in response.content.decode()
    assert not WebhookSubscription.objects.exists()

    response = client.post(url, {**form, "url": "https://93.184.216.34/in"})
    assert response.status_code == 302, response.content.decode()[:2000]
    created = WebhookSubscription.objects.get()
    assert created.kinds == ["event.failed"] and len(created.secret) > 30
    assert any(created.secret in str(message) for message in get_messages(response.wsgi_request))


def test_rotate_and_replay_actions(hook, login):
    client = login("superuser")
    response = client.post(
        reverse("admin:connect_webhooksubscription_changelist"),
        {"action": "rotate_secret", "_selected_action": [str(hook.pk)]},
    )
    assert response.status_code == 302
    hook.refresh_from_db()
    assert hook.previous_secret == SECRET and hook.secret != SECRET and len(hook.signing_secrets()) == 2

    delivery = WebhookDelivery.objects.get()
    WebhookDelivery.objects.filter(pk=delivery.pk).update(status="failed", attempts=10)
    response = client.post(
        reverse("admin:connect_webhookdelivery_changelist"),
        {"action": "replay", "_selected_action": [str(delivery.pk)]},
    )
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("pending", 0)  # due now: the next drain sends it
