"""Admin of rule drafts (SPEC §15): write a draft, approve it (not one's own), publish, backtest."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from .drafts import DraftRefused, draft_approve, draft_create, draft_discard, draft_publish, draft_update
from .models import RuleDraft
from .services import rule_from_dict


class RuleDraftForm(forms.ModelForm):
    data = forms.JSONField(
        widget=forms.Textarea(
            attrs={"rows": 30, "cols": 100, "spellcheck": "false", "style": "font-family: monospace"}
        ),
        help_text="The rule as in a rules file (SPEC §6); checked as an import would check it.",
    )

    class Meta:
        model = RuleDraft
        fields = ("data",)

    def clean_data(self):
        data = self.cleaned_data["data"]
        try:
            rule_from_dict(data=data)
        except ValidationError as exc:
            raise forms.ValidationError(exc.messages) from exc
        if self.instance.pk is not None and data.get("code") != self.instance.code:
            raise forms.ValidationError("A draft keeps the code of the rule it changes.")
        return data


@admin.register(RuleDraft)
class RuleDraftAdmin(admin.ModelAdmin):
    form = RuleDraftForm
    list_display = ("code", "status", "author", "approved_by", "published_by", "published_version", "created_at")
    list_filter = ("status",)
    search_fields = ("code",)
    list_select_related = ("author", "approved_by", "published_by")
    readonly_fields = (
        "code",
        "status",
        "base_version",
        "author",
        "approved_by",
        "approved_at",
        "published_by",
        "published_at",
        "published_version",
        "backtest_link",
    )
    actions = ["approve_selected", "publish_selected", "discard_selected"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("data",)
        return ("data", *self.readonly_fields)

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.status != RuleDraft.Status.DRAFT:
            return ("data", *self.readonly_fields)
        return self.readonly_fields

    def has_delete_permission(self, request, obj=None):
        return False  # a draft's record (author, approver) is history; discard it instead

    def save_model(self, request, obj, form, change):
        if change:
            draft_update(draft_id=obj.pk, data=form.cleaned_data["data"], user=request.user)
        else:
            obj.pk = draft_create(data=form.cleaned_data["data"], author=request.user).pk
        obj.refresh_from_db()

    @admin.display(description="Backtest")
    def backtest_link(self, obj: RuleDraft):
        try:
            url = reverse("admin:connect_backtestrun_add")
        except NoReverseMatch:
            return "—"
        return format_html('<a href="{}?draft={}">Backtest this draft over stored events</a>', url, obj.pk)

    def _each(self, request, queryset, service, done: str):
        count = 0
        for draft in queryset:
            try:
                service(draft_id=draft.pk, user=request.user)
            except (DraftRefused, ValidationError) as exc:
                text = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
                messages.error(request, f"{draft}: {text}")
            else:
                count += 1
        if count:
            messages.success(request, f"{done} {count} draft(s).")

    @admin.action(description="Approve selected drafts (not your own)", permissions=["change"])
    def approve_selected(self, request, queryset):
        self._each(request, queryset, draft_approve, "Approved")

    @admin.action(description="Publish selected drafts (a new rule version)", permissions=["change"])
    def publish_selected(self, request, queryset):
        self._each(request, queryset, draft_publish, "Published")

    @admin.action(description="Discard selected drafts", permissions=["change"])
    def discard_selected(self, request, queryset):
        self._each(request, queryset, draft_discard, "Discarded")
