"""Webhook subscriptions and deliveries in admin: superusers only (SPEC §11)."""

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from config.admin_base import badge, breakable

from .models import Kind, WebhookAttempt, WebhookDelivery, WebhookSubscription
from .services import (
    webhook_delivery_replay,
    webhook_kinds_clean,
    webhook_secret_rotate,
    webhook_subscription_create,
    webhook_url_clean,
)


def _superuser(request) -> bool:
    return request.user.is_active and request.user.is_superuser


class SuperuserOnly:
    """Whatever permissions a staff user was given, only superusers see or touch webhooks."""

    def has_module_permission(self, request):
        return _superuser(request)

    def has_view_permission(self, request, obj=None):
        return _superuser(request)

    def has_add_permission(self, request, obj=None):
        return _superuser(request)

    def has_change_permission(self, request, obj=None):
        return _superuser(request)

    def has_delete_permission(self, request, obj=None):
        return _superuser(request)


class SubscriptionForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https", help_text="Where deliveries are POSTed.")
    kinds = forms.MultipleChoiceField(choices=Kind.choices, widget=forms.CheckboxSelectMultiple)
    secret = forms.CharField(
        required=False,
        min_length=16,
        help_text="Leave empty to generate one (shown once after saving). Rotate it later with the list action.",
    )

    class Meta:
        model = WebhookSubscription
        fields = ("url", "description", "kinds", "is_active")

    def clean_url(self):
        try:
            return webhook_url_clean(self.cleaned_data["url"])
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["url"]) from None

    def clean_kinds(self):
        try:
            return webhook_kinds_clean(self.cleaned_data["kinds"])
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["kinds"]) from None


class SubscriptionChangeForm(SubscriptionForm):
    class Meta(SubscriptionForm.Meta):
        pass

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.fields["secret"]  # a secret is never shown again; it is rotated instead


@admin.register(WebhookSubscription)
class WebhookSubscriptionAdmin(SuperuserOnly, admin.ModelAdmin):
    list_display = ("url_text", "kinds_list", "active", "in_rotation", "created_at")
    list_filter = ("is_active",)
    search_fields = ("url", "description")
    actions = ["rotate_secret"]
    readonly_fields = ("previous_secret_expires_at", "deliveries_link", "created_at", "updated_at")

    def get_form(self, request, obj=None, change=False, **kwargs):
        kwargs["form"] = SubscriptionChangeForm if obj is not None else SubscriptionForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("url", "description", "kinds", "secret", "is_active")
        return (
            "url", "description", "kinds", "is_active", "previous_secret_expires_at", "deliveries_link",
            "created_at", "updated_at",
        )  # fmt: skip

    def save_model(self, request, obj, form, change):
        if change:
            obj.save()
            return
        created = webhook_subscription_create(
            url=form.cleaned_data["url"],
            kinds=form.cleaned_data["kinds"],
            secret=form.cleaned_data.get("secret") or None,
            description=form.cleaned_data.get("description", ""),
        )
        if not form.cleaned_data["is_active"]:
            created.is_active = False
            created.save(update_fields=["is_active"])
        obj.pk = created.pk
        if not form.cleaned_data.get("secret"):
            messages.warning(request, f"The signing secret (shown once, store it now): {created.secret}")

    @admin.display(description="Deliveries")
    def deliveries_link(self, obj):
        url = reverse("admin:connect_webhookdelivery_changelist") + f"?subscription__id__exact={obj.pk}"
        return format_html('<a href="{}">Deliveries and their attempts</a>', url)

    @admin.display(description="URL", ordering="url")
    def url_text(self, obj):
        # A long URL wraps at its separators instead of widening the list.
        return format_html('{}<div class="small">{}</div>', breakable(obj.url), obj.description)

    @admin.display(description="Kinds")
    def kinds_list(self, obj):
        return format_html_join("", "<div>{}</div>", ((kind,) for kind in obj.kinds))

    @admin.display(description="Active", ordering="is_active")
    def active(self, obj):
        return badge("active", "active") if obj.is_active else badge("inactive", "off")

    @admin.display(description="Old secret still signs", boolean=True)
    def in_rotation(self, obj):
        return len(obj.signing_secrets()) > 1

    @admin.action(description="Rotate the secret (the old one keeps signing during the grace period)")
    def rotate_secret(self, request, queryset):
        for subscription in queryset:
            rotated, secret = webhook_secret_rotate(subscription_id=subscription.pk)
            messages.warning(
                request,
                f"{rotated.url}: new secret (shown once, store it now): {secret}; the old one signs too until "
                f"{rotated.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC.",
            )


class AttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ("started_at", "outcome", "status_code", "duration_ms", "error", "response_excerpt")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(SuperuserOnly, admin.ModelAdmin):
    list_display = ("created_at", "kind_text", "subscription_url", "status_badge", "attempts", "last_status_code",
                    "delivered_at")  # fmt: skip
    list_select_related = ("subscription",)
    list_filter = ("status", "kind", "subscription")
    search_fields = ("id__exact",)
    ordering = ("-created_at",)
    show_full_result_count = False
    fields = (
        "id", "subscription", "kind", "status", "attempts", "next_attempt_at", "last_status_code", "last_error",
        "created_at", "delivered_at", "payload_json",
    )  # fmt: skip
    readonly_fields = fields
    inlines = [AttemptInline]
    actions = ["replay"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Kind", ordering="kind")
    def kind_text(self, obj):
        return breakable(obj.kind)

    @admin.display(description="Subscription", ordering="subscription__url")
    def subscription_url(self, obj):
        return breakable(obj.subscription.url)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj):
        return badge(obj.status)

    @admin.display(description="Payload")
    def payload_json(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, ensure_ascii=False, sort_keys=True))

    @admin.action(description="Replay: send again (same delivery id and payload)")
    def replay(self, request, queryset):
        if not request.user.is_superuser:
            return
        count = 0
        for delivery in queryset[:500]:
            webhook_delivery_replay(delivery_id=delivery.pk)
            count += 1
        messages.success(request, f"{count} delivery(ies) queued to be sent again.")
