import re

from django.contrib import admin
from django.urls import reverse
from django.utils.html import escape, format_html
from django.utils.safestring import mark_safe


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


def badge(value: str, label: str | None = None) -> str:
    """A status as a coloured pill; the colour comes from the theme's ``badge-<value>`` class."""
    return format_html('<span class="badge badge-{}">{}</span>', value, label if label is not None else value)


def user_page_url(user_id: str) -> str:
    return reverse("admin_user_page", args=[user_id])


def user_link(user_id: str | None) -> str:
    """A user id linked to its user page (every user id in the admin is shown through this)."""
    if not user_id:
        return "—"
    return format_html('<a class="user-link" href="{}">{}</a>', user_page_url(user_id), user_id)


_BREAK_AFTER = re.compile(r"([._(,/])")


def breakable(text: str) -> str:
    """Escaped text with line-break opportunities after dots, underscores, brackets and commas, so a
    long code or expression wraps inside a narrow column instead of widening the table."""
    return mark_safe(_BREAK_AFTER.sub(r"\1<wbr>", escape(text)))  # escaped first, then only <wbr> added
