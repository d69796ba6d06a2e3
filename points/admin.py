from django.contrib import admin, messages

from .models import Account, Entry, Hold, ServiceClient, ServiceClientKey, Transaction


class ReadOnlyLedgerAdmin(admin.ModelAdmin):
    """Ledger rows are written only by the ledger services; nobody edits them here."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Account)
class AccountAdmin(ReadOnlyLedgerAdmin):
    list_display = ("__str__", "kind", "balance", "held", "available", "created_at")
    list_filter = ("kind",)
    search_fields = ("user_id", "code")


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
    list_display = ("created_at", "kind", "account", "amount", "balance_after", "reason", "source", "external_id")
    list_filter = ("kind", "source", "created_at")
    search_fields = ("external_id", "account__user_id", "reason")
    list_select_related = ("account",)
    date_hierarchy = "created_at"
    inlines = [EntryInline]


@admin.register(Entry)
class EntryAdmin(ReadOnlyLedgerAdmin):
    list_display = ("transaction", "account", "part", "amount")
    list_filter = ("part",)
    search_fields = ("transaction__external_id", "account__user_id")
    list_select_related = ("transaction", "account")


@admin.register(Hold)
class HoldAdmin(ReadOnlyLedgerAdmin):
    list_display = ("id", "account", "amount", "status", "expires_at", "captured_amount", "released_amount", "source")
    list_filter = ("status", "source")
    search_fields = ("id", "account__user_id")
    list_select_related = ("account",)


class ServiceClientKeyInline(admin.TabularInline):
    model = ServiceClientKey
    fields = ("prefix", "name", "created", "expiry_date", "revoked")
    readonly_fields = ("prefix", "name", "created")
    extra = 0

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(ServiceClient)
class ServiceClientAdmin(admin.ModelAdmin):
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

    @admin.action(description="Issue a new API key")
    def issue_key(self, request, queryset):
        for client in queryset:
            self._issue(request, client)

    @admin.action(description="Revoke all API keys")
    def revoke_keys(self, request, queryset):
        count = ServiceClientKey.objects.filter(client__in=queryset, revoked=False).update(revoked=True)
        messages.success(request, f"Revoked {count} key(s).")
