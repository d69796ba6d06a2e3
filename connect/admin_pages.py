"""Admin pages that span the apps: the user page and the finance reports (SPEC §17).

They are served under ``/admin/`` by ``connect.admin_urls`` and wrapped by the admin site's own
``admin_view`` (login, staff only); each checks its role's permissions (SPEC §11) itself.
"""

import csv
from datetime import date, timedelta

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from config.admin_base import user_page_url
from points import reports
from points.admin_views import csv_safe

from .user_overview import reversal_shortfalls, user_overview

REPORT_DEFAULT_MONTHS = 12
REPORT_MAX_DAYS = 10 * 366
CHART_WIDTH, CHART_HEIGHT, CHART_LEFT, CHART_BOTTOM = 900, 240, 64, 26
FLOW_SERIES = (
    ("issued", "Issued", "#2f9e57"),
    ("spent", "Spent", "#2f5bc4"),
    ("reversed", "Reversed", "#d97706"),
    ("expired", "Expired", "#9ca3af"),
)


def can_see_user_page(user) -> bool:
    return user.has_perm("connect.view_userprofile")


def can_see_ledger(user) -> bool:
    return user.has_perm("points.view_account") and user.has_perm("points.view_transaction")


def _context(request, title: str, **extra) -> dict:
    return {**admin.site.each_context(request), "title": title, **extra}


# --- user page -------------------------------------------------------------------------------


def user_search_view(request):
    """The search box of the admin index and the top bar: an exact user id opens its page."""
    if not can_see_user_page(request.user):
        raise PermissionDenied
    user_id = request.GET.get("q", "").strip()
    if not user_id or "/" in user_id or len(user_id) > 100:
        messages.error(request, "Enter a user id (1 to 100 characters, no “/”).")
        return HttpResponseRedirect(reverse("admin:index"))
    return HttpResponseRedirect(user_page_url(user_id))


def user_page_view(request, user_id: str):
    if not can_see_user_page(request.user):
        raise PermissionDenied
    overview = user_overview(user_id=user_id, with_ledger=can_see_ledger(request.user))
    context = _context(
        request,
        f"User {user_id}",
        overview=overview,
        can_view_events=request.user.has_perm("connect.view_economicevent"),
        can_view_actions=request.user.has_perm("connect.view_rewardaction"),
        can_adjust=request.user.has_perm("points.adjust_account"),
        adjust_url=reverse("admin:points_account_adjust") + "?" + urlencode({"user_id": user_id}),
        statement_url=(
            reverse("admin:points_account_statement", args=[overview.account.pk]) if overview.account else None
        ),
        actions_url=reverse("admin:connect_rewardaction_changelist") + "?" + urlencode({"q": user_id}),
        events_url=reverse("admin:connect_economicevent_changelist") + "?" + urlencode({"q": user_id}),
        now=timezone.now(),
    )
    return TemplateResponse(request, "admin/connect/user_page.html", context)


# --- finance reports -------------------------------------------------------------------------


def _report_range(request) -> tuple[date, date]:
    today = timezone.localdate()
    default_first = reports.month_start(today)
    for _ in range(REPORT_DEFAULT_MONTHS - 1):
        default_first = reports.month_start(default_first - timedelta(days=1))
    first, last = default_first, today
    problems = []
    for name in ("from", "to"):
        raw = request.GET.get(name, "").strip()
        if not raw:
            continue
        try:
            value = date.fromisoformat(raw)
        except ValueError:
            problems.append(f"“{name}” must be a date as YYYY-MM-DD.")
            continue
        if name == "from":
            first = value
        else:
            last = value
    if first > last:
        problems.append("“from” must not be after “to”.")
    elif (last - first).days > REPORT_MAX_DAYS:
        problems.append("The range may span at most ten years.")
    if problems:
        for problem in problems:
            messages.error(request, problem + " Showing the last twelve months instead.")
        return default_first, today
    return first, last


def _flow_chart(flows: list[reports.MonthFlow]) -> dict:
    peak = max((getattr(flow, key) for flow in flows for key, _, _ in FLOW_SERIES), default=0) or 1
    plot_width, plot_height = CHART_WIDTH - CHART_LEFT, CHART_HEIGHT - CHART_BOTTOM
    slot = plot_width / max(len(flows), 1)
    bar_width = max((slot - 6) / len(FLOW_SERIES), 1)
    groups = []
    for index, flow in enumerate(flows):
        x0 = CHART_LEFT + index * slot + 3
        bars = []
        for n, (key, label, colour) in enumerate(FLOW_SERIES):
            value = getattr(flow, key)
            height = value / peak * (plot_height - 10)
            bars.append(
                {"x": round(x0 + n * bar_width, 1), "y": round(plot_height - height, 1), "w": round(bar_width - 1, 1),
                 "h": round(height, 1), "colour": colour, "title": f"{flow.month:%Y-%m} {label}: {value}"}
            )  # fmt: skip
        groups.append({"month": flow.month, "bars": bars, "label_x": round(x0 + (slot - 6) / 2, 1)})
    return {
        "groups": groups,
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "left": CHART_LEFT,
        "baseline": plot_height,
        "grid": [{"y": round(plot_height - f * (plot_height - 10), 1), "value": round(peak * f)} for f in (0.5, 1)],
        "legend": [{"label": label, "colour": colour} for _, label, colour in FLOW_SERIES],
    }


def _require_finance(request) -> None:
    if not can_see_ledger(request.user):
        raise PermissionDenied


def reports_view(request):
    _require_finance(request)
    first, last = _report_range(request)
    flows = reports.monthly_flows(first_day=first, last_day=last)
    totals = reports.MonthFlow(month=first)
    for flow in flows:
        for key in ("issued", "spent", "reversed", "expired", "adjusted_in", "adjusted_out", "returned"):
            setattr(totals, key, getattr(totals, key) + getattr(flow, key))
    systems = reports.system_accounts()
    liability = reports.liability()
    query = urlencode({"from": first.isoformat(), "to": last.isoformat()})
    context = _context(
        request,
        "Finance reports",
        first=first,
        last=last,
        liability=liability,
        # Double entry: the system accounts' entries are the users' balances with the sign turned.
        system_total=sum(row["total"] for row in systems),
        expiring=reports.expiring(),
        flows=flows,
        totals=totals,
        chart=_flow_chart(flows),
        systems=systems,
        shortfalls=reversal_shortfalls(),
        csv_url=reverse("admin_points_reports_csv") + "?" + query,
    )
    return TemplateResponse(request, "admin/points/reports.html", context)


REPORT_CSV_COLUMNS = (
    "month", "issued", "spent", "reversed", "expired", "adjusted_in", "adjusted_out", "returned", "net",
)  # fmt: skip


def reports_csv_view(request):
    _require_finance(request)
    first, last = _report_range(request)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="points-by-month-{first:%Y%m%d}-{last:%Y%m%d}.csv"'
    response["Cache-Control"] = "no-store"
    writer = csv.writer(response)
    writer.writerow(REPORT_CSV_COLUMNS)
    for flow in reports.monthly_flows(first_day=first, last_day=last):
        writer.writerow(
            [csv_safe(f"{flow.month:%Y-%m}"), *(getattr(flow, key) for key in REPORT_CSV_COLUMNS[1:-1]), flow.net]
        )
    return response
