"""Finance pages of the ledger admin: account statement, streamed CSV export, manual adjustments.

Nothing here writes a ledger row itself: an adjustment goes through ``services.account_adjust``.
The pages are wired into the admin by ``points.admin`` (URLs, permissions).
"""

import csv
import json
import uuid
from datetime import date, datetime, time, timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.main import IncorrectLookupParameters
from django.core.paginator import Paginator
from django.db.models import OuterRef, QuerySet, Subquery, Sum, TextField
from django.db.models.functions import Cast, Coalesce
from django.http import HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from config.api.errors import DomainError
from config.api.fields import storable_text_problem, user_id_problem
from config.api.jsonbody import stored_json_value

from .errors import IdempotencyConflict, InsufficientFunds
from .models import Account, Entry, Transaction
from .services import MAX_AMOUNT, account_adjust

STATEMENT_PAGE_SIZE = 100
CSV_CHUNK_SIZE = 2000


# --- filters shared by the changelists, the statement and the export -------------------------


def parse_day(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise IncorrectLookupParameters(f"{name}: expected a date as YYYY-MM-DD, got {value!r}.") from None


def day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min), timezone.get_current_timezone())


class InputFilter(admin.ListFilter):
    """A sidebar filter of free-text inputs (a user id, a prefix, a date range) rather than links.

    Subclasses list ``fields`` as (query parameter, label, input type) and implement ``apply``.
    """

    template = "admin/input_filter.html"
    fields: tuple[tuple[str, str, str], ...] = ()

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        for name, _, _ in self.fields:
            if name in params:
                value = params.pop(name)[-1].strip()
                if value:
                    self.used_parameters[name] = value

    def has_output(self):
        return True

    def expected_parameters(self):
        return [name for name, _, _ in self.fields]

    def choices(self, changelist):
        names = self.expected_parameters()
        yield {
            "hidden": [(key, value) for key, value in changelist.params.items() if key not in names],
            "inputs": [
                {"name": name, "label": label, "type": kind, "value": self.used_parameters.get(name, "")}
                for name, label, kind in self.fields
            ],
            "clear_url": changelist.get_query_string(remove=names) if self.used_parameters else "",
        }

    def queryset(self, request, queryset):
        if not self.used_parameters:
            return queryset
        return self.apply(queryset, self.used_parameters)

    def apply(self, queryset: QuerySet, values: dict[str, str]) -> QuerySet:
        raise NotImplementedError


class AccountUserFilter(InputFilter):
    """Exact user id (the accounts' unique index), for transactions, entries and holds."""

    title = "user"
    fields = (("user", "User id", "text"),)
    lookup = "account__user_id"

    def apply(self, queryset, values):
        return queryset.filter(**{self.lookup: values["user"]})


class ReasonPrefixFilter(InputFilter):
    title = "reason"
    fields = (("reason", "Reason starts with", "text"),)

    def apply(self, queryset, values):
        return queryset.filter(reason__startswith=values["reason"])


def created_range(queryset: QuerySet, *, since: str | None, until: str | None, field: str = "created_at") -> QuerySet:
    """Rows created on or after day ``since`` and on or before day ``until`` (inclusive, local days)."""
    if since:
        queryset = queryset.filter(**{f"{field}__gte": day_start(parse_day(since, "from"))})
    if until:
        queryset = queryset.filter(**{f"{field}__lt": day_start(parse_day(until, "to") + timedelta(days=1))})
    return queryset


class CreatedRangeFilter(InputFilter):
    title = "date range"
    fields = (("created_from", "From", "date"), ("created_to", "To (inclusive)", "date"))
    field = "created_at"

    def apply(self, queryset, values):
        return created_range(
            queryset, since=values.get("created_from"), until=values.get("created_to"), field=self.field
        )


# --- statement -------------------------------------------------------------------------------


def with_balance_changes(queryset: QuerySet) -> QuerySet:
    """Annotate each transaction with what it did to its account's balance and held points.

    The sums come from the account's own entries (both parts make the balance; the ``held`` part is
    the held points), so they are exact whatever order the transactions are listed in.
    """
    own_entries = Entry.objects.filter(transaction=OuterRef("pk"), account=OuterRef("account_id")).order_by()

    def total(entries):
        return Coalesce(Subquery(entries.values("transaction").annotate(total=Sum("amount")).values("total")[:1]), 0)

    return queryset.annotate(
        balance_change=total(own_entries), held_change=total(own_entries.filter(part=Entry.Part.HELD))
    )


def statement_view(model_admin, request, account: Account):
    kind = request.GET.get("kind", "")
    since = request.GET.get("created_from", "").strip()
    until = request.GET.get("created_to", "").strip()
    transactions = Transaction.objects.filter(account=account)
    if kind in Transaction.Kind.values:
        transactions = transactions.filter(kind=kind)
    try:
        transactions = created_range(transactions, since=since, until=until)
        opening = None
        if since:
            opening = (
                Transaction.objects.filter(account=account, created_at__lt=day_start(parse_day(since, "from")))
                .order_by("-created_at", "-pk")
                .values_list("balance_after", flat=True)
                .first()
            ) or 0
    except IncorrectLookupParameters as exc:
        messages.error(request, str(exc))
        since = until = ""
        opening = None
        transactions = Transaction.objects.filter(account=account)

    rows = with_balance_changes(transactions.select_related("created_by", "hold").defer("metadata")).order_by(
        "-created_at", "-pk"
    )
    page = Paginator(rows, STATEMENT_PAGE_SIZE).get_page(request.GET.get("p"))
    filters = {key: value for key, value in (("kind", kind), ("created_from", since), ("created_to", until)) if value}
    export_query = {"user": account.user_id, **filters}
    if "kind" in export_query:
        export_query["kind__exact"] = export_query.pop("kind")
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": f"Statement of {account}",
        "account": account,
        "page": page,
        "kinds": Transaction.Kind.choices,
        "kind": kind,
        "created_from": since,
        "created_to": until,
        "opening_balance": opening,
        "filter_query": urlencode(filters),
        "export_url": reverse("admin:points_transaction_export") + "?" + urlencode(export_query),
        "can_adjust": request.user.has_perm("points.adjust_account"),
        "adjust_url": reverse("admin:points_account_adjust") + "?" + urlencode({"user_id": account.user_id}),
    }
    return TemplateResponse(request, "admin/points/account/statement.html", context)


# --- CSV -------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "transaction_id",
    "created_at",
    "kind",
    "user_id",
    "amount",
    "balance_change",
    "held_change",
    "balance_after",
    "held_after",
    "available_after",
    "reason",
    "source",
    "external_id",
    "hold_id",
    "staff_user",
    "metadata",
)
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: str) -> str:
    """Text a spreadsheet would run as a formula is prefixed with a quote (CSV injection)."""
    return "'" + value if value.startswith(_FORMULA_PREFIXES) else value


class _Echo:
    def write(self, value):
        return value


def _csv_rows(queryset: QuerySet):
    queryset = queryset.annotate(metadata_text=Cast("metadata", output_field=TextField()))
    values = with_balance_changes(queryset).values_list(
        "pk",
        "created_at",
        "kind",
        "account__user_id",
        "account__code",
        "amount",
        "balance_change",
        "held_change",
        "balance_after",
        "held_after",
        "reason",
        "source",
        "external_id",
        "hold_id",
        "created_by__username",
        "metadata_text",
    )
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for (
        pk, created_at, kind, user_id, code, amount, balance_change, held_change,
        balance_after, held_after, reason, source, external_id, hold_id, staff, metadata,
    ) in values.iterator(chunk_size=CSV_CHUNK_SIZE):  # fmt: skip
        available_after = None if balance_after is None or held_after is None else balance_after - held_after
        yield writer.writerow(
            (
                pk,
                created_at.isoformat(),
                kind,
                csv_safe(user_id if user_id is not None else f"[{code}]"),
                amount,
                balance_change,
                held_change,
                "" if balance_after is None else balance_after,
                "" if held_after is None else held_after,
                "" if available_after is None else available_after,
                csv_safe(reason),
                csv_safe(source),
                csv_safe(external_id),
                hold_id or "",
                csv_safe(staff or ""),
                csv_safe(
                    json.dumps(stored_json_value(metadata), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
                ),
            )
        )


def transactions_csv_response(queryset: QuerySet, *, filename: str | None = None) -> StreamingHttpResponse:
    """Stream ``queryset`` as CSV, a chunk of rows at a time (a server-side cursor on PostgreSQL).

    Memory stays flat however many rows there are; the order is the queryset's.
    """
    filename = filename or f"transactions-{timezone.now():%Y%m%d-%H%M%S}.csv"
    response = StreamingHttpResponse(_csv_rows(queryset), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


# --- manual adjustment -----------------------------------------------------------------------


class AdjustmentForm(forms.Form):
    CREDIT = "credit"
    DEBIT = "debit"

    # Taken exactly as typed: the API stores user ids verbatim, so trimming would adjust another account.
    user_id = forms.CharField(
        max_length=100, strip=False, label="User id", help_text="The user whose account is adjusted."
    )
    direction = forms.ChoiceField(
        choices=((CREDIT, "Credit: add points"), (DEBIT, "Debit: remove points")),
        widget=forms.RadioSelect,
        initial=CREDIT,
    )
    amount = forms.IntegerField(min_value=1, max_value=MAX_AMOUNT, help_text="Points, a positive whole number.")
    reason = forms.CharField(
        max_length=200,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Required. Kept on the transaction with your user name.",
    )
    # One token per form shown: submitting the same form twice posts one adjustment, not two.
    token = forms.UUIDField(widget=forms.HiddenInput)
    new_account = forms.BooleanField(
        required=False,
        label="Open a new account",
        help_text="Needed only when this user has no account yet (guards against a mistyped user id).",
    )

    def clean_user_id(self):
        user_id = self.cleaned_data["user_id"]
        problem = user_id_problem(user_id)
        # An account stored before user ids were checked stays adjustable under its exact id.
        if problem and not Account.objects.filter(user_id=user_id, kind=Account.Kind.USER).exists():
            raise forms.ValidationError(problem)
        return user_id

    def clean(self):
        cleaned = super().clean()
        user_id = cleaned.get("user_id")
        if user_id and not cleaned.get("new_account"):
            if not Account.objects.filter(user_id=user_id, kind=Account.Kind.USER).exists():
                self.add_error("user_id", f"No account exists for {user_id!r}. Tick “Open a new account” to create it.")
        return cleaned

    def clean_reason(self):
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("A reason is required.")
        return reason

    @property
    def signed_amount(self) -> int:
        amount = self.cleaned_data["amount"]
        return amount if self.cleaned_data["direction"] == self.CREDIT else -amount


def adjustment_view(model_admin, request):
    if request.method == "POST":
        form = AdjustmentForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                result = account_adjust(
                    user_id=data["user_id"],
                    amount=form.signed_amount,
                    reason=data["reason"],
                    staff_user=request.user,
                    external_id=f"adjustment:{data['token']}",
                )
            except InsufficientFunds as exc:
                available = exc.details.get("available")
                form.add_error(
                    "amount",
                    f"Refused: insufficient funds. {data['user_id']} has {available} point(s) available; "
                    f"a debit of {data['amount']} would take the account below zero.",
                )
            except IdempotencyConflict:
                form.add_error(None, "This form was already submitted with other values. Open a new form.")
            except (DomainError, ValueError) as exc:
                form.add_error(None, f"Refused: {getattr(exc, 'message', None) or exc}")
            else:
                txn = result.transaction
                verb = "Credited" if form.signed_amount > 0 else "Debited"
                note = " (already posted, not repeated)" if result.replayed else ""
                messages.success(
                    request,
                    f"{verb} {data['amount']} point(s) to {data['user_id']}{note}: balance {txn.balance_after}, "
                    f"available {txn.available_after}.",
                )
                return HttpResponseRedirect(reverse("admin:points_account_statement", args=[txn.account_id]))
    else:
        form = AdjustmentForm(
            initial={
                "user_id": request.GET.get("user_id", ""),
                "token": uuid.uuid4(),
                "direction": AdjustmentForm.CREDIT,
            }
        )
    account = None
    user_id = (form.data.get("user_id") if form.is_bound else form.initial.get("user_id")) or ""
    if user_id and storable_text_problem(user_id) is None:
        account = Account.objects.filter(user_id=user_id, kind=Account.Kind.USER).first()
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Manual adjustment",
        "form": form,
        "account": account,
    }
    return TemplateResponse(request, "admin/points/account/adjust.html", context)
