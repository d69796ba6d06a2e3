from django.contrib import admin


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """A view-only admin: rows are written by services, never edited here (superusers included)."""

    # Tables grow to millions of rows: no unfiltered COUNT(*) on every changelist page.
    show_full_result_count = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
