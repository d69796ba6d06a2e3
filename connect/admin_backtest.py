"""Admin of backtests (SPEC §15): start one for a draft or a rules file, watch its progress bar, read the report."""

import json

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from rules.models import RuleDraft

from .backtest import BacktestInvalid, report_lines
from .backtest_runs import backtest_start
from .models import BacktestRun


class BacktestStartForm(forms.Form):
    draft = forms.ModelChoiceField(
        queryset=RuleDraft.objects.filter(status=RuleDraft.Status.DRAFT),
        required=False,
        help_text="Replayed with production's other active rules.",
    )
    rules_file = forms.JSONField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 90, "style": "font-family: monospace"}),
        help_text='Or a rules file {"rules": [...]}: its rules replace production\'s rules of the same code.',
    )
    since = forms.DateTimeField(help_text="Events received from this moment (inclusive)…")
    until = forms.DateTimeField(help_text="…to this one (exclusive).")

    def clean(self):
        data = super().clean()
        if not data.get("draft") and not data.get("rules_file"):
            raise forms.ValidationError("Choose a draft or paste a rules file.")
        if data.get("since") and data.get("until") and data["since"] >= data["until"]:
            raise forms.ValidationError("since must be before until.")
        return data


@admin.register(BacktestRun)
class BacktestRunAdmin(admin.ModelAdmin):
    list_display = ("created_at", "draft", "since", "until", "status", "progress_bar", "created_by")
    list_filter = ("status",)
    list_select_related = ("draft", "created_by")
    fields = ("status", "progress_bar", "draft", "since", "until", "created_by", "created_at", "finished_at",
              "error", "report_text", "report_json")  # fmt: skip
    readonly_fields = fields

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Progress")
    def progress_bar(self, obj: BacktestRun):
        return format_html(
            '<progress class="backtest-progress" value="{}" max="100"></progress> {}% ({} / {} events)',
            obj.percent,
            obj.percent,
            obj.processed,
            obj.total,
        )

    @admin.display(description="Report")
    def report_text(self, obj: BacktestRun):
        if not obj.report:
            return "—"
        return format_html('<pre class="backtest-report">{}</pre>', "\n".join(report_lines(obj.report)))

    @admin.display(description="Report (JSON)")
    def report_json(self, obj: BacktestRun):
        if not obj.report:
            return "—"
        return format_html("<details><summary>JSON</summary><pre>{}</pre></details>", json.dumps(obj.report, indent=2))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        run = BacktestRun.objects.filter(pk=object_id).only("status").first()
        if run is not None and run.status in (BacktestRun.Status.QUEUED, BacktestRun.Status.RUNNING):
            response["Refresh"] = "2"  # the progress bar follows the running task
        return response

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            return super().add_view(request, form_url, extra_context)
        initial = {"draft": request.GET.get("draft")} if request.GET.get("draft") else {}
        form = BacktestStartForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                run = backtest_start(
                    since=data["since"],
                    until=data["until"],
                    user=request.user,
                    draft=data["draft"],
                    payload=None if data["draft"] else data["rules_file"],
                )
            except BacktestInvalid as exc:
                form.add_error(None, "; ".join(exc.errors))
            else:
                messages.success(request, "Backtest started; this page follows its progress.")
                return HttpResponseRedirect(reverse("admin:connect_backtestrun_change", args=[run.pk]))
        from django.template.response import TemplateResponse

        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Backtest rules over stored events",
            "form": form,
        }
        return TemplateResponse(request, "admin/connect/backtestrun/start.html", context)
