import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.db.models import Case, OuterRef, Subquery, Sum, TextField, When
from django.db.models.functions import Cast, Coalesce
from django.http import Http404, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html

from config.admin_base import ReadOnlyModelAdmin, badge, user_link
from config.api.jsonbody import StrictJSONFormField, stored_json_value

from . import admin_views
from .admin_views import AccountUserFilter, CreatedRangeFilter, ReasonPrefixFilter
from .models import Account, Entry, Hold, Lot, ServiceClient, ServiceClientKey, Transaction
from .namespaces import client_name_problem


class ReadOnlyLedgerAdmin(ReadOnlyModelAdmin):
    """Ledger rows are written only by the ledger services; nobody edits them here, superusers included."""


def account_link(account: Account):
    """A user account as a link to its user's page; a system account by its code."""
    return user_link(account.user_id) if account.kind == Account.Kind.USER else str(account)


def _can_read_ledger(request) -> bool:
    return request.user.has_perm("points.view_account") and request.user.has_perm("points.view_transaction")


@admin.register(Account)
class AccountAdmin(ReadOnlyLedgerAdmin):
    list_display = ("owner", "kind", "balance_shown", "held", "available_shown", "created_at", "statement_link")
    list_filter = ("kind",)
    search_fields = ("user_id__exact", "code__exact")
    search_help_text = "Exact user id (or system account code)."
    change_list_template = "admin/points/account/change_list.html"

    def get_queryset(self, request):
        # A system account keeps no cached balance (locking it on every posting would serialise the
        # ledger): what it stands for is the sum of its entries, computed for those rows only.
        entries_total = Subquery(
            Entry.objects.filter(account=OuterRef("pk"))
            .order_by()
            .values("account")
            .annotate(total=Sum("amount"))
            .values("total")[:1]
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                shown_balance=Case(When(kind=Account.Kind.SYSTEM, then=Coalesce(entries_total, 0)), default="balance")
            )
        )

    @admin.display(description="Balance", ordering="shown_balance")
    def balance_shown(self, obj: Account):
        return getattr(obj, "shown_balance", obj.balance)

    @admin.display(description="Available")
    def available_shown(self, obj: Account):
        if obj.kind != Account.Kind.USER:
            return getattr(obj, "shown_balance", obj.balance)
        return obj.available

    @admin.display(description="Account", ordering="user_id")
    def owner(self, obj: Account):
        return account_link(obj)

    @admin.display(description="Statement")
    def statement_link(self, obj: Account):
        if obj.kind != Account.Kind.USER:
            return "—"  # system accounts take the other side of entries; they have no transactions of their own
        return format_html('<a href="{}">Statement</a>', reverse("admin:points_account_statement", args=[obj.pk]))

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("adjust/", view(self.adjust_view), name="points_account_adjust"),
            path("<int:account_id>/statement/", view(self.statement_view), name="points_account_statement"),
            *super().get_urls(),
        ]

    def statement_view(self, request, account_id: int):
        if not _can_read_ledger(request):
            raise PermissionDenied
        account = Account.objects.filter(pk=account_id, kind=Account.Kind.USER).first()
        if account is None:
            raise Http404("No such user account.")
        return admin_views.statement_view(self, request, account)

    def adjust_view(self, request):
        if not request.user.has_perm("points.adjust_account"):
            raise PermissionDenied
        return admin_views.adjustment_view(self, request)

    def changelist_view(self, request, extra_context=None):
        extra_context = {"can_adjust": request.user.has_perm("points.adjust_account"), **(extra_context or {})}
        return super().changelist_view(request, extra_context)


class EntryInline(admin.TabularInline):
    model = Entry
    fields = ("account", "part", "amount")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Transaction)
class TransactionAdmin(ReadOnlyLedgerAdmin):
    list_display = (
        "created_at",
        "kind",
        "owner",
        "amount",
        "balance_after",
        "reason",
        "source",
        "external_id",
        "created_by",
    )
    list_filter = (AccountUserFilter, "kind", ReasonPrefixFilter, CreatedRangeFilter)
    search_fields = ("external_id__exact",)
    search_help_text = "Exact external_id."
    list_select_related = ("account", "created_by")
    ordering = ("-created_at", "-id")
    inlines = [EntryInline]
    actions = ["export_csv"]
    change_list_template = "admin/points/transaction/change_list.html"

    def get_fields(self, request, obj=None):
        return [("metadata_shown" if name == "metadata" else name) for name in super().get_fields(request, obj)]

    def get_readonly_fields(self, request, obj=None):
        return (*super().get_readonly_fields(request, obj), "metadata_shown")

    def get_queryset(self, request):
        return super().get_queryset(request).defer("metadata")

    @admin.display(description="Metadata")
    def metadata_shown(self, obj: Transaction):
        stored = (
            Transaction.objects.filter(pk=obj.pk)
            .values_list(Cast("metadata", output_field=TextField()), flat=True)
            .first()
        )
        value = stored_json_value(stored)
        return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))

    @admin.display(description="Account", ordering="account__user_id")
    def owner(self, obj: Transaction):
        return account_link(obj.account)

    def get_urls(self):
        return [
            path("export/", self.admin_site.admin_view(self.export_view), name="points_transaction_export"),
            *super().get_urls(),
        ]

    def export_view(self, request):
        """The changelist's current selection (filters, search, ordering) as a streamed CSV file."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            changelist = self.get_changelist_instance(request)
        except IncorrectLookupParameters as exc:
            messages.error(request, f"Cannot export: {exc}")
            return HttpResponseRedirect(reverse("admin:points_transaction_changelist"))
        return admin_views.transactions_csv_response(changelist.get_queryset(request))

    @admin.action(description="Export selected transactions as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        return admin_views.transactions_csv_response(queryset.order_by("-created_at", "-id"))


@admin.register(Entry)
class EntryAdmin(ReadOnlyLedgerAdmin):
    list_display = ("transaction", "account", "part", "amount")
    list_filter = (AccountUserFilter, "part")
    search_fields = ("transaction__external_id__exact",)
    search_help_text = "Exact external_id of the transaction."
    list_select_related = ("transaction", "account")

    def get_queryset(self, request):
        return super().get_queryset(request).defer("transaction__metadata")


class HoldCreatedRangeFilter(CreatedRangeFilter):
    title = "placed"


@admin.register(Hold)
class HoldAdmin(ReadOnlyLedgerAdmin):
    list_display = (
        "id", "owner", "amount", "status_badge", "created_at", "expires_at", "captured_amount", "released_amount", "source",
    )  # fmt: skip
    list_filter = (AccountUserFilter, "status", HoldCreatedRangeFilter)
    search_fields = ("transactions__external_id__exact",)
    search_help_text = "Exact external_id of the hold's transaction."
    list_select_related = ("account",)
    ordering = ("-created_at",)

    @admin.display(description="Account", ordering="account__user_id")
    def owner(self, obj: Hold):
        return account_link(obj.account)

    @admin.display(description="Status", ordering="status")
    def status_badge(self, obj: Hold):
        return badge(obj.status)


@admin.register(Lot)
class LotAdmin(ReadOnlyLedgerAdmin):
    """Points by when they came in and when they expire (SPEC §13); read-only like the rest of the ledger."""

    list_display = ("id", "account", "amount", "remaining", "expired_amount", "expires_at", "created_at", "transaction")
    list_filter = (AccountUserFilter,)
    search_fields = ("transaction__external_id__exact",)
    search_help_text = "Exact external_id of the credit or adjustment that opened the lot."
    list_select_related = ("account", "transaction")
    ordering = ("-created_at",)


class ServiceClientKeyInline(admin.TabularInline):
    model = ServiceClientKey
    fields = ("prefix", "name", "created", "expiry_date", "revoked")
    readonly_fields = ("prefix", "name", "created")
    extra = 0

    def has_add_permission(self, request, obj=None):
        return False


class ServiceClientForm(forms.ModelForm):
    class Meta:
        model = ServiceClient
        fields = ("name", "scopes", "is_active")
        field_classes = {"scopes": StrictJSONFormField}

    def clean_name(self):
        name = self.cleaned_data["name"]
        problem = client_name_problem(name)
        if problem:
            raise forms.ValidationError(problem)
        return name


@admin.register(ServiceClient)
class ServiceClientAdmin(admin.ModelAdmin):
    """API keys: superusers only (no staff group is granted these permissions)."""

    form = ServiceClientForm
    list_display = ("name", "scopes", "is_active", "created_at")
    search_fields = ("name",)
    inlines = [ServiceClientKeyInline]
    actions = ["issue_key", "revoke_keys"]

    def get_readonly_fields(self, request, obj=None):
        # The name is the idempotency namespace of the client's ledger operations: fixed once made.
        return ("name",) if obj else ()

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            self._issue(request, obj)

    def _issue(self, request, client):
        _, key = ServiceClientKey.objects.create_key(client=client, name=f"{client.name} key")
        messages.warning(request, f"API key for {client.name} (shown once, store it now): {key}")

    @admin.action(description="Issue a new API key", permissions=["change"])
    def issue_key(self, request, queryset):
        for client in queryset:
            self._issue(request, client)

    @admin.action(description="Revoke all API keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        count = ServiceClientKey.objects.filter(client__in=queryset, revoked=False).update(revoked=True)
        messages.success(request, f"Revoked {count} key(s).")
